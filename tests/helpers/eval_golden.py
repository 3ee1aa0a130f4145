"""Loading ../shared/golden/eval (the official DINO evaluation code's outputs) for the golden tests."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

import dinofeat
from dinofeat.features.extractor import FeatureExtractor
from tests.helpers.common import shared_path

GOLDEN_ARCH = {"patch_size": 16, "embed_dim": 192, "depth": 2, "num_heads": 3}


def eval_golden() -> tuple[dict[str, torch.Tensor], dict[str, Any], Path]:
    """(tensors, JSON settings and results, folder) of the evaluation goldens, or a skip."""
    folder = shared_path("golden", "eval")
    return (*_load(str(folder)), folder)


@lru_cache(maxsize=1)
def _load(folder: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    return (
        load_file(str(Path(folder) / "eval_golden.safetensors")),
        json.loads((Path(folder) / "eval_golden.json").read_text()),
    )


def golden_model() -> FeatureExtractor:
    """The official 2-block ViT-Tiny/16 of the goldens, read from its official .pth."""
    path = shared_path("golden", "eval", "eval_vit_tiny_p16_depth2.pth")
    return dinofeat.load(str(path), arch=GOLDEN_ARCH, device="cpu")
