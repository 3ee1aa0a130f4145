"""The ``dinofeat`` command line. Each sub-command group lives in its own module and
registers itself through ``add_parsers(subparsers)``; argparse lives only in this package."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from dinofeat.cli import classification, demo, dense, evaluation, export, features, search
from dinofeat.utils.errors import ImageReadError

_GROUPS = [features, classification, search, evaluation, dense, export, demo]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dinofeat", description="DINO self-supervised vision features")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in _GROUPS:
        group.add_parsers(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dinofeat`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, KeyError, FileNotFoundError, RuntimeError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        if isinstance(error, ImageReadError) and getattr(args, "skip_unreadable", None) is False:
            message = f"{message} (--skip-unreadable leaves unreadable images out)"
        print(f"dinofeat {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
