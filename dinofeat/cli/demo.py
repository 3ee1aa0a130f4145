"""``dinofeat demo``: the local web page (needs the ``[demo]`` extra: starlette, uvicorn)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from dinofeat.cli.common import DEFAULT_MODEL
from dinofeat.dense.views import DEFAULT_DENSE_SIZE
from dinofeat.utils.extras import require

DEFAULT_PORT = 7860
#: The sample photos of a source checkout (they are not part of the wheel).
CHECKOUT_SAMPLES = Path(__file__).resolve().parents[2] / "examples" / "images"


def add_parsers(subparsers: Any) -> None:
    demo = subparsers.add_parser("demo", help="local web page: attention, PCA, similarity, index neighbours")
    demo.add_argument("-m", "--model", default=DEFAULT_MODEL,
                      help=f"model loaded at start (default {DEFAULT_MODEL}, offline); others load "
                           "from the page")
    demo.add_argument("--index", help="index folder made by `dinofeat index`: show the nearest images")
    demo.add_argument("--samples", help="folder of sample photos offered in the page "
                                        "(default: examples/images of a source checkout)")
    demo.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    demo.add_argument("--port", type=int, default=DEFAULT_PORT,
                      help="port (default %(default)s; 0: any free port)")
    demo.add_argument("--size", type=int, default=DEFAULT_DENSE_SIZE,
                      help="shorter side images are resized to, whole (default %(default)s)")
    demo.add_argument("--device", help="cuda, mps or cpu (default: the best available)")
    demo.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    if not 0 <= args.port < 65536:
        raise ValueError(f"--port must be in [0, 65535], got {args.port}")
    if args.size < 16:
        raise ValueError(f"--size must be at least 16 pixels, got {args.size}")
    for module in ("starlette", "uvicorn"):
        require(module, "demo", "dinofeat demo")
    from dinofeat.demo import DemoServer, DemoSettings, create_app
    from dinofeat.demo.server import bind

    try:
        sock = bind(args.host, args.port)  # a taken port fails before the model loads
    except OSError as error:
        raise RuntimeError(str(error)) from None
    samples = Path(args.samples) if args.samples else None
    if samples is None and CHECKOUT_SAMPLES.is_dir():
        samples = CHECKOUT_SAMPLES
    settings = DemoSettings(model=args.model, index=Path(args.index) if args.index else None,
                            samples=samples, device=args.device, size=args.size)
    print(f"loading {args.model} ...", file=sys.stderr)
    try:
        server = DemoServer(create_app(settings), args.host, log_level="info", sock=sock)
    except BaseException:
        sock.close()
        raise
    print(f"dinofeat demo: open {server.url} (Ctrl-C stops it)", file=sys.stderr)
    server.serve_forever()
    return 0
