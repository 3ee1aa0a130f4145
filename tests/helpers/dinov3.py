"""DINOv3 test pieces: a tiny architecture and the golden models' architectures."""

from __future__ import annotations

import functools
import json

from tests.helpers.common import shared_path

TINY_V3 = {"family": "dinov3", "embed_dim": 32, "depth": 2, "num_heads": 2, "n_storage_tokens": 4,
           "layerscale_init": 1e-5, "norm_layer": "layernormbf16", "mask_k_bias": True,
           "pos_embed_rope_dtype": "fp32"}


@functools.cache
def golden_meta() -> dict:
    return json.loads((shared_path("golden", "dinov3") / "golden.json").read_text())


def golden_arch(name: str) -> dict:
    """The ``arch=`` dict of a golden model, built from the official builder's keyword arguments."""
    return {"family": "dinov3", **golden_meta()["models"][name]["official_kwargs"]}
