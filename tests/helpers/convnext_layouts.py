"""The timm and HF transformers key layouts of a DINOv3 ConvNeXt, written out by hand for the tests,
independently of dinofeat.models.dinov3_convnext.convert."""

from __future__ import annotations

import re

import torch

#: A tiny random DINOv3 ConvNeXt in the official builder's words.
TINY = {"family": "dinov3_convnext", "depths": [1, 1, 1, 1], "dims": [8, 16, 24, 32]}


def official_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The timm key names, written out independently of dinofeat.models.dinov3_convnext.convert."""
    out = {}
    for key, value in state.items():
        if key.startswith("norms."):
            continue
        key = re.sub(r"^downsample_layers\.0\.", "stem.", key)
        key = re.sub(r"^downsample_layers\.(\d)\.", r"stages.\1.downsample.", key)
        key = re.sub(r"^stages\.(\d)\.(\d+)\.", r"stages.\1.blocks.\2.", key)
        for official, timm_name in ((".dwconv.", ".conv_dw."), (".pwconv", ".mlp.fc")):
            key = key.replace(official, timm_name)
        out[re.sub(r"^norm\.", "head.norm.", key)] = value
    return out


def official_to_transformers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The HF DINOv3ConvNextModel names as its hub files store them (no ``model.`` prefix)."""
    names = {"dwconv": "depthwise_conv", "norm": "layer_norm", "pwconv1": "pointwise_conv1",
             "pwconv2": "pointwise_conv2"}
    out = {}
    for key, value in state.items():
        if key.startswith("norms."):
            continue
        key = re.sub(r"^downsample_layers\.(\d)\.", r"stages.\1.downsample_layers.", key)
        key = re.sub(r"^stages\.(\d)\.(\d+)\.(\w+)",
                     lambda m: f"stages.{m[1]}.layers.{m[2]}.{names.get(m[3], m[3])}", key)
        out[re.sub(r"^norm\.", "layer_norm.", key)] = value
    return out
