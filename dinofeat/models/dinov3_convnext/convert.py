"""Pure key-mapping functions: timm / HF transformers DINOv3 ConvNeXt layouts -> the official layout.

The official layout (what Meta's ``.pth`` files hold) is the native one of
:class:`~dinofeat.models.DinoV3ConvNeXt`; the timm Hub copies (``timm/convnext_tiny.dinov3_lvd1689m``)
and the transformers repositories (``facebook/dinov3-convnext-tiny-pretrain-lvd1689m``,
``DINOv3ConvNextModel``) rename the same tensors. Nothing here reads files; unknown keys are left in
place so that strict loading names them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from dinofeat.models.dinov3_convnext.config import DinoV3ConvNeXtConfig

StateDict = dict[str, torch.Tensor]

#: The official final norm also appears as the last entry of its per-stage norms.
_NORM_ALIAS = "norms.3."

# (pattern, replacement) pairs applied in order; each key matches at most one.
_TIMM_RENAMES = [
    (re.compile(r"^stem\.(\d)\."), r"downsample_layers.0.\1."),
    (re.compile(r"^stages\.(\d+)\.downsample\.(\d)\."), r"downsample_layers.\1.\2."),
    (re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.conv_dw\."), r"stages.\1.\2.dwconv."),
    (re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc([12])\."), r"stages.\1.\2.pwconv\3."),
    (re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.(norm\.|gamma$)"), r"stages.\1.\2.\3"),
    (re.compile(r"^head\.norm\."), "norm."),
]
_TRANSFORMERS_RENAMES = [
    (re.compile(r"^stages\.(\d+)\.downsample_layers\.(\d)\."), r"downsample_layers.\1.\2."),
    (re.compile(r"^stages\.(\d+)\.layers\.(\d+)\.depthwise_conv\."), r"stages.\1.\2.dwconv."),
    (re.compile(r"^stages\.(\d+)\.layers\.(\d+)\.layer_norm\."), r"stages.\1.\2.norm."),
    (re.compile(r"^stages\.(\d+)\.layers\.(\d+)\.pointwise_conv([12])\."), r"stages.\1.\2.pwconv\3."),
    (re.compile(r"^stages\.(\d+)\.layers\.(\d+)\.gamma$"), r"stages.\1.\2.gamma"),
    (re.compile(r"^layer_norm\."), "norm."),
]


def _rename(state: Mapping[str, torch.Tensor], renames: list[tuple[re.Pattern[str], str]]) -> StateDict:
    out: StateDict = {}
    for key, value in state.items():
        for pattern, replacement in renames:
            new, count = pattern.subn(replacement, key)
            if count:
                key = new
                break
        out[key] = value
    for key in [k for k in out if k.startswith("norm.")]:
        out.setdefault(_NORM_ALIAS + key[len("norm."):], out[key])
    return out


def timm_to_official(state: Mapping[str, torch.Tensor]) -> StateDict:
    """timm ``ConvNeXt`` keys (``stem.*``, ``stages.S.blocks.M.*``, ``head.norm.*``) -> official keys.

    A classifier (``head.fc.*``) is not part of the backbone and is dropped.

    Example:
        >>> state = {"stem.0.weight": torch.zeros(1), "stages.1.blocks.0.mlp.fc2.bias": torch.zeros(1),
        ...          "head.norm.bias": torch.zeros(1)}
        >>> sorted(timm_to_official(state))
        ['downsample_layers.0.0.weight', 'norm.bias', 'norms.3.bias', 'stages.1.0.pwconv2.bias']
    """
    kept = {key: value for key, value in state.items() if not key.startswith("head.fc.")}
    return _rename(kept, _TIMM_RENAMES)


def transformers_to_official(state: Mapping[str, torch.Tensor]) -> StateDict:
    """HF ``DINOv3ConvNextModel`` keys (``[model.]stages.S.layers.M.*``, ``layer_norm.*``) -> official keys.

    Example:
        >>> state = {"model.stages.0.downsample_layers.1.weight": torch.zeros(1),
        ...          "stages.2.layers.3.pointwise_conv1.weight": torch.zeros(1)}
        >>> sorted(transformers_to_official(state))
        ['downsample_layers.0.1.weight', 'stages.2.3.pwconv1.weight']
    """
    stripped = {key.removeprefix("model.") if key.startswith("model.stages.") else key: value
                for key, value in state.items()}
    return _rename(stripped, _TRANSFORMERS_RENAMES)


def to_official(state: Mapping[str, torch.Tensor]) -> StateDict:
    """Any of the three layouts -> official keys, told apart by their key names.

    Example:
        >>> sorted(to_official({"layer_norm.weight": torch.ones(2)}))
        ['norm.weight', 'norms.3.weight']
    """
    if any(key.startswith("stem.") or key.startswith("head.norm.") for key in state):
        return timm_to_official(state)
    if any(key.startswith(("layer_norm.", "model.stages.")) or ".layers." in key for key in state):
        return transformers_to_official(state)
    return dict(state)


def config_from_transformers(config: Mapping[str, Any]) -> DinoV3ConvNeXtConfig:
    """A :class:`DinoV3ConvNeXtConfig` from a transformers ``config.json`` (``model_type`` dinov3_convnext).

    Example:
        >>> config_from_transformers({"model_type": "dinov3_convnext", "depths": [3, 3, 9, 3],
        ...                           "hidden_sizes": [96, 192, 384, 768]}).embed_dim
        768
    """
    if config.get("model_type") != "dinov3_convnext":
        raise ValueError(f"not a DINOv3 ConvNeXt config: model_type {config.get('model_type')!r}")
    if config.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"DINOv3 ConvNeXt uses GELU, the config asks for {config['hidden_act']!r}")
    return DinoV3ConvNeXtConfig(
        depths=tuple(config.get("depths", (3, 3, 9, 3))),
        dims=tuple(config.get("hidden_sizes", (96, 192, 384, 768))),
        in_chans=int(config.get("num_channels", 3)),
        drop_path_rate=float(config.get("drop_path_rate", 0.0)),
        layer_scale_init_value=float(config.get("layer_scale_init_value", 1e-6)),
        layer_norm_eps=float(config.get("layer_norm_eps", 1e-6)),
    )
