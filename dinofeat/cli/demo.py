"""``dinofeat demo``: the local web demo (see :mod:`dinofeat.demo`)."""

from __future__ import annotations

import argparse
from typing import Any

from dinofeat.registry import BUNDLED_MODEL


def add_parsers(subparsers: Any) -> None:
    demo = subparsers.add_parser("demo", help="local web page: attention, PCA, similarity, index neighbours")
    demo.add_argument("--model", default=BUNDLED_MODEL, help=f"model to start with (default {BUNDLED_MODEL})")
    demo.add_argument("--index", help="index folder made by `dinofeat index` (shows the nearest images)")
    demo.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine)")
    demo.add_argument("--port", type=int, default=7860)
    demo.add_argument("--device", help="cuda, mps or cpu (default: the best available)")
    demo.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    try:
        from dinofeat.demo_app import serve
    except ImportError as error:
        raise RuntimeError(f"the demo needs the demo extra: pip install 'dinofeat[demo]' ({error})") from None
    serve(args.model, args.index, args.host, args.port, args.device)
    return 0
