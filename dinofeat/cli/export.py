"""``dinofeat export-onnx``: an ONNX graph of any zoo model, checked with onnxruntime."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from dinofeat.hub.loading import load
from dinofeat.models.export_graph import OUTPUTS


def add_parsers(subparsers: Any) -> None:
    export = subparsers.add_parser("export-onnx", help="export a model to ONNX (checked with onnxruntime)")
    export.add_argument("model", help="zoo name, hf-hub:org/repo[@rev], a model folder or a weights file")
    export.add_argument("-o", "--output", required=True, help="output .onnx file (+ .preprocess.json beside)")
    shape = export.add_mutually_exclusive_group()
    shape.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                       help="fixed input size (default: the model's crop, square)")
    shape.add_argument("--dynamic", action="store_true", help="free input height and width")
    export.add_argument("--outputs", default="cls,patches",
                        help=f"comma-separated, among {','.join(OUTPUTS)} (attention: ViTs only)")
    export.add_argument("--opset", type=int, default=17, help="ONNX opset version")
    export.add_argument("--half", action="store_true", help="float16 weights and computation")
    export.add_argument("--arch", help="architecture of a bare weights file: a zoo name")
    export.add_argument("--no-check", action="store_true",
                        help="skip the onnxruntime comparison with PyTorch (not recommended)")
    export.set_defaults(func=run_export_onnx)


def run_export_onnx(args: argparse.Namespace) -> int:
    from dinofeat.export.onnx import export_onnx  # imports the exporter only when asked

    outputs = [name.strip() for name in args.outputs.split(",") if name.strip()]
    size = (args.size[0], args.size[1]) if args.size else None
    model = load(args.model, arch=args.arch, device="cpu")
    result = export_onnx(model, args.output, size=size, dynamic=args.dynamic, outputs=outputs,
                         opset=args.opset, half=args.half, check=not args.no_check)
    checked = ", ".join(f"{name} {difference:.1e}" for name, difference in result.differences.items())
    shapes = " and ".join("x".join(map(str, shape[2:])) for shape in result.checked_shapes)
    print(f"wrote {result.path} ({', '.join(outputs)}) and {result.preprocess_path.name}"
          + (f"; onnxruntime vs PyTorch at {shapes}: max |diff| {checked}" if checked else "; not checked"),
          file=sys.stderr)
    return 0
