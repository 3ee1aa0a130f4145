#!/usr/bin/env bash
# The project's test command: builds the virtual environment if it is missing, then runs
# ruff, mypy, import-linter and pytest. DINOFEAT_VENV chooses where the environment lives (default .venv).
set -euo pipefail
cd "$(dirname "$0")"
venv="${DINOFEAT_VENV:-.venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  # torch is not pinned: pip takes the torch release that matches torchvision.
  "$venv/bin/python" -m pip install -q -e ".[dev]"
fi
# Run this checkout's code, whichever checkout built the environment (CI shares one between clones),
# in this process and in every process the tests start.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$venv/bin/python" -m ruff check .
"$venv/bin/python" -m mypy
"$venv/bin/lint-imports"
"$venv/bin/python" -m pytest "$@"
