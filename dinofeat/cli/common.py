"""Options and messages shared by the sub-command groups."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

SKIPPED_NAMES_SHOWN = 10


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
