"""``dinofeat models`` (and, from the core library, ``embed`` / ``attention``)."""

from __future__ import annotations

import argparse
from typing import Any

from dinofeat.registry import list_models


def add_parsers(subparsers: Any) -> None:
    models = subparsers.add_parser("models", help="list the model zoo")
    models.set_defaults(func=run_models)


def run_models(args: argparse.Namespace) -> int:
    for spec in list_models():
        knn = f"{spec.knn_top1:.1f}" if spec.knn_top1 is not None else "-"
        print(f"{spec.name:22s} dim {spec.embed_dim:5d}  k-NN {knn:>5s}  {spec.description}")
    return 0
