"""``python -m dinofeat.training``."""

from dinofeat.training.cli import main

raise SystemExit(main())
