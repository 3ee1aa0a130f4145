"""Key mapping of DINO / DINOv2 ViT weights: official DINOv2 and HF transformers layouts -> timm keys.

Pure functions: each takes a state dict (and, for HF transformers, its ``config.json`` dict) and
returns a new one in the layout of :class:`~dinofeat.models.vit.model.DinoVisionTransformer`. Keys
that are not part of a backbone (DINOv2's mask token, the transformers pooler) are dropped by name;
anything else unexpected is left in place so that strict loading reports it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from dinofeat.models.vit.config import ViTConfig

StateDict = dict[str, torch.Tensor]

_TRANSFORMERS_PREFIXES = ("vit.", "dinov2.", "dinov2_with_registers.")


def dinov2_official_to_timm(state: Mapping[str, torch.Tensor], arch: ViTConfig) -> StateDict:
    """Official DINOv2 keys (``mask_token``, ``register_tokens``, ``mlp.w12`` / ``w3``) -> timm keys.

    For register models timm adds no position to the CLS token, so the official CLS position
    row is folded into ``cls_token`` and dropped from ``pos_embed``.

    Example:
        >>> cfg = ViTConfig(patch_size=14, embed_dim=8, depth=1, num_heads=2, img_size=28)
        >>> state = {"mask_token": torch.zeros(1, 8), "cls_token": torch.zeros(1, 1, 8)}
        >>> sorted(dinov2_official_to_timm(state, cfg))
        ['cls_token']
    """
    out: StateDict = {}
    for key, value in state.items():
        if key == "mask_token":
            continue  # iBOT masking token, used only in training
        if key == "register_tokens":
            key = "reg_token"
        key = re.sub(r"^blocks\.(\d+)\.mlp\.w12\.", r"blocks.\1.mlp.fc1.", key)
        key = re.sub(r"^blocks\.(\d+)\.mlp\.w3\.", r"blocks.\1.mlp.fc2.", key)
        out[key] = value
    if not arch.pos_embed_has_cls and "pos_embed" in out and "cls_token" in out:
        expected = (arch.img_size // arch.patch_size) ** 2
        pos = out["pos_embed"]
        if pos.shape[1] == expected + 1:
            out["cls_token"] = out["cls_token"] + pos[:, :1]
            out["pos_embed"] = pos[:, 1:]
    return out


def vit_config_from_transformers(config: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> ViTConfig:
    """A :class:`ViTConfig` from an HF transformers ``config.json``.

    ``model_type`` must be ``vit``, ``dinov2`` or ``dinov2_with_registers``.

    The MLP width is read from the weights, so SwiGLU models need no formula. Position-embedding
    resampling follows the official implementation of the family (DINO / DINOv2), not transformers'.
    """
    model_type = config.get("model_type")
    if model_type not in ("vit", "dinov2", "dinov2_with_registers"):
        raise ValueError(f"unsupported transformers model_type {model_type!r}; expected vit, dinov2 or "
                         "dinov2_with_registers")
    dim = int(config["hidden_size"])
    state = _strip_transformers_prefix(state)
    dinov2 = model_type != "vit"
    swiglu = bool(config.get("use_swiglu_ffn", False))
    mlp_in = "mlp.weights_in" if swiglu else ("mlp.fc1" if dinov2 else "intermediate.dense")
    hidden = state[f"encoder.layer.0.{mlp_in}.weight"].shape[0]
    registers = int(config.get("num_register_tokens", 0)) if model_type == "dinov2_with_registers" else 0
    return ViTConfig(
        patch_size=int(config["patch_size"]),
        embed_dim=dim,
        depth=int(config["num_hidden_layers"]),
        num_heads=int(config["num_attention_heads"]),
        mlp_ratio=hidden / dim,
        qkv_bias=bool(config.get("qkv_bias", True)),
        layer_norm_eps=float(config.get("layer_norm_eps", 1e-12)),
        img_size=int(config["image_size"]),
        num_register_tokens=registers,
        layer_scale_init=float(config.get("layerscale_value", 1.0)) if dinov2 else None,
        mlp="swiglu" if swiglu else "gelu",
        pos_embed_has_cls=registers == 0,
        interpolate_offset=0.0 if registers else 0.1,
        interpolate_antialias=registers > 0,
    )


def _strip_transformers_prefix(state: Mapping[str, torch.Tensor]) -> StateDict:
    out: StateDict = {}
    for key, value in state.items():
        for prefix in _TRANSFORMERS_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


_TRANSFORMERS_BLOCK_RENAMES = {
    "attention.output.dense": "attn.proj",
    "layernorm_before": "norm1",  # ViTModel
    "layernorm_after": "norm2",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "norm1": "norm1",  # Dinov2Model
    "norm2": "norm2",
    "layer_scale1.lambda1": "ls1.gamma",
    "layer_scale2.lambda1": "ls2.gamma",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "mlp.weights_in": "mlp.fc1",
    "mlp.weights_out": "mlp.fc2",
}


_TRANSFORMERS_TOP_RENAMES = {
    "embeddings.cls_token": "cls_token",
    "embeddings.register_tokens": "reg_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}


_TRANSFORMERS_DROPPED = ("embeddings.mask_token", "pooler.dense.weight", "pooler.dense.bias")


_BLOCK_KEY = re.compile(r"^encoder\.layer\.(\d+)\.(.+)\.(weight|bias|lambda1)$")


def transformers_to_timm(state: Mapping[str, torch.Tensor], arch: ViTConfig) -> StateDict:
    """HF transformers ViTModel / Dinov2Model(+registers) keys -> timm keys.

    The input is what ``save_pretrained`` writes (and the Hub repositories hold).

    Separate query / key / value projections are concatenated into ``qkv`` (rows q, k, v);
    the pooler and the mask token are dropped; register models get the CLS position folded in.

    Example:
        >>> cfg = ViTConfig(patch_size=8, embed_dim=4, depth=1, num_heads=1, img_size=8)
        >>> state = {"layernorm.weight": torch.ones(4), "pooler.dense.bias": torch.ones(4)}
        >>> sorted(transformers_to_timm(state, cfg))
        ['norm.weight']
    """
    out: StateDict = {}
    qkv_parts: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in _strip_transformers_prefix(state).items():
        if key in _TRANSFORMERS_DROPPED:
            continue
        if key in _TRANSFORMERS_TOP_RENAMES:
            out[_TRANSFORMERS_TOP_RENAMES[key]] = value
            continue
        match = _BLOCK_KEY.match(key)
        if match is None:
            out[key] = value  # unknown: strict loading will name it
            continue
        index, module, param = int(match.group(1)), match.group(2), match.group(3)
        if module.startswith("attention.attention."):
            qkv_parts.setdefault((index, param), {})[module.rsplit(".", 1)[1]] = value
        elif f"{module}.{param}" in _TRANSFORMERS_BLOCK_RENAMES:
            out[f"blocks.{index}.{_TRANSFORMERS_BLOCK_RENAMES[f'{module}.{param}']}"] = value
        elif module in _TRANSFORMERS_BLOCK_RENAMES:
            out[f"blocks.{index}.{_TRANSFORMERS_BLOCK_RENAMES[module]}.{param}"] = value
        else:
            out[key] = value
    for (index, param), parts in sorted(qkv_parts.items()):
        missing = {"query", "key", "value"} - set(parts)
        if missing:
            raise KeyError(f"transformers weights lack encoder.layer.{index}.attention.attention."
                           f"{sorted(missing)}.{param}")
        out[f"blocks.{index}.attn.qkv.{param}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    return dinov2_official_to_timm(out, arch) if arch.num_register_tokens else out
