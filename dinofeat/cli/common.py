"""Options and messages shared by the sub-command groups."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from dinofeat.features.extractor import FeatureExtractor
from dinofeat.features.model_ids import RANDOM_INIT_SEED
from dinofeat.hub.loading import load
from dinofeat.registry import BUNDLED_MODEL
from dinofeat.utils.atomic_write import write_text_atomically

SKIPPED_NAMES_SHOWN = 10
DEFAULT_MODEL = BUNDLED_MODEL  # works offline: its weights ship in the package


def add_model_options(parser: argparse.ArgumentParser, default: str = f"{DEFAULT_MODEL}, bundled") -> None:
    """``--model``, ``--arch``, ``--random-init`` and ``--device``; see :func:`load_model_option`.

    ``--model`` defaults to None so that "not given" stays visible (a command may then use a saved
    model, as ``search`` uses the index's); :func:`model_source` turns None into the bundled model.
    """
    parser.add_argument("-m", "--model", "--weights", dest="model", default=None,
                        help="zoo name, hf-hub:org/repo[@rev], a model folder or a weights file "
                             f"(default {default})")
    parser.add_argument("--arch", help="architecture of a bare weights file: a zoo name")
    parser.add_argument("--random-init", action="store_true",
                        help=f"build the architecture with random weights (seed {RANDOM_INIT_SEED}); "
                             "smoke tests only")
    parser.add_argument("--device", help="cuda, mps or cpu (default: the best available)")


def add_batch_options(parser: argparse.ArgumentParser, batch_size: int | None = 64) -> None:
    """``--batch-size`` (unless fixed: None), ``--workers`` and ``--no-progress``."""
    if batch_size is not None:
        parser.add_argument("--batch-size", type=int, default=batch_size, help="images per forward pass")
    add_workers_option(parser)
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def model_source(args: argparse.Namespace) -> str:
    """``--model``, or the bundled model (offline) when it is not given."""
    return str(args.model) if args.model else DEFAULT_MODEL


def load_model(source: str, random_init: bool = False, device: str | None = None, arch: str | None = None
               ) -> FeatureExtractor:
    """:func:`dinofeat.load` of ``source``; random weights (seed :data:`RANDOM_INIT_SEED`) if asked."""
    if random_init:
        torch.manual_seed(RANDOM_INIT_SEED)
    return load(source, arch=arch, device=device, pretrained=not random_init)


def load_model_option(args: argparse.Namespace) -> FeatureExtractor:
    """The model :func:`add_model_options` describes."""
    return load_model(model_source(args), args.random_init, args.device, args.arch)


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
