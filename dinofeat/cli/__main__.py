from dinofeat.cli import main

raise SystemExit(main())
