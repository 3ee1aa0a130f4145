#!/usr/bin/env bash
# The project's test command: builds the virtual environment if it is missing, then runs
# ruff, mypy and pytest. DINOFEAT_VENV chooses where the environment lives (default .venv).
set -euo pipefail
cd "$(dirname "$0")"
venv="${DINOFEAT_VENV:-.venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  # torch is not pinned: pip takes the torch release that matches torchvision.
  "$venv/bin/python" -m pip install -q -e ".[dev]"
fi
# CI keeps one environment for many clones: its editable install must point at this checkout, or
# dinofeat.training (mapped from training/) would be imported from the clone that built it.
if ! "$venv/bin/python" -c 'import sys, dinofeat.training as t; sys.exit(not t.__file__.startswith(sys.argv[1]))' \
    "$PWD/"; then
  "$venv/bin/python" -m pip install -q --no-deps -e .
fi
"$venv/bin/python" -m ruff check .
"$venv/bin/python" -m mypy
"$venv/bin/python" -m pytest "$@"
