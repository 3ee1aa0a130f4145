"""Options and messages shared by the sub-command groups."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dinofeat.atomic_write import write_text_atomically
from dinofeat.extractor import FeatureExtractor
from dinofeat.loading import load
from dinofeat.registry import BUNDLED_MODEL

SKIPPED_NAMES_SHOWN = 10
DEFAULT_MODEL = BUNDLED_MODEL  # works offline: its weights ship in the package


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """``--model`` (default the bundled model), ``--arch`` and ``--device``; see :func:`load_model_option`."""
    parser.add_argument("-m", "--model", "--weights", dest="model", default=DEFAULT_MODEL,
                        help="zoo name, hf-hub:org/repo[@rev], a model folder or a weights file "
                             f"(default {DEFAULT_MODEL})")
    parser.add_argument("--arch", help="architecture of a bare weights file: a zoo name")
    parser.add_argument("--device", help="cuda, mps or cpu (default: the best available)")


def load_model_option(args: argparse.Namespace) -> FeatureExtractor:
    return load(args.model, arch=args.arch, device=args.device)


def write_json(path: str | Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON, atomically."""
    write_text_atomically(path, json.dumps(payload, indent=2) + "\n")


def add_skip_unreadable_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--skip-unreadable", action="store_true",
                        help="leave out images that cannot be read (counted and named on stderr) "
                             "instead of stopping at the first one")


def add_workers_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=None,
                        help="DataLoader workers decoding images (default: 4, or fewer on fewer cores)")


def report_skipped(skipped: Sequence[Path]) -> None:
    """Name the images ``--skip-unreadable`` left out (the first few) on stderr."""
    if not skipped:
        return
    names = ", ".join(str(path) for path in skipped[:SKIPPED_NAMES_SHOWN])
    more = f" and {len(skipped) - SKIPPED_NAMES_SHOWN} more" if len(skipped) > SKIPPED_NAMES_SHOWN else ""
    print(f"skipped {len(skipped)} unreadable image(s): {names}{more}", file=sys.stderr)
