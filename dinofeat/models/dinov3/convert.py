"""Pure key-mapping functions for DINOv3 ViTs: timm and HF transformers layouts -> the official one.

:class:`~dinofeat.models.DinoV3VisionTransformer` keeps the official keys, so an official
``.pth`` passes through unchanged. timm's ``Eva`` files and HF ``DINOv3ViTModel`` files lack
what their models recompute or never use; these functions put back exactly what the
official model would hold:

* ``rope_embed.periods``: the values the released checkpoints store, the float32 periods
  rounded to bfloat16 (:func:`~dinofeat.models.dinov3.rope.released_periods`). timm and transformers
  recompute float32 periods instead, which moves the outputs (docs/models.md has the numbers);
* ``qkv.bias`` / ``bias_mask``: timm's ``_qkvb`` and HF files hold the q and v biases only
  (the key bias is masked to zero in the official forward), plain timm files none (the
  released biases are all zero); the bias is rebuilt with a zero key third and the mask [1, 0, 1];
* ``mask_token`` (training only, zero) and ``local_cls_norm`` (training only, identity).

Nothing here reads files; unknown keys stay in place so that strict loading names them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from dinofeat.models.dinov3.config import DINOV3_FFN_ALIGN, DinoV3Config
from dinofeat.models.dinov3.rope import released_periods

StateDict = dict[str, torch.Tensor]

_TIMM_RENAMES = (
    (r"^reg_token$", "storage_tokens"),
    (r"^blocks\.(\d+)\.gamma_1$", r"blocks.\1.ls1.gamma"),
    (r"^blocks\.(\d+)\.gamma_2$", r"blocks.\1.ls2.gamma"),
    (r"^blocks\.(\d+)\.mlp\.fc1_g\.", r"blocks.\1.mlp.w1."),
    (r"^blocks\.(\d+)\.mlp\.fc1_x\.", r"blocks.\1.mlp.w2."),
)
_HF_RENAMES = (
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.mask_token$", "mask_token"),
    (r"^embeddings\.register_tokens$", "storage_tokens"),
    (r"^embeddings\.patch_embeddings\.", "patch_embed.proj."),
    (r"^layer\.(\d+)\.attention\.o_proj\.", r"blocks.\1.attn.proj."),
    (r"^layer\.(\d+)\.layer_scale([12])\.lambda1$", r"blocks.\1.ls\2.gamma"),
    (r"^layer\.(\d+)\.mlp\.gate_proj\.", r"blocks.\1.mlp.w1."),
    (r"^layer\.(\d+)\.(norm[12])\.", r"blocks.\1.\2."),
)
_HF_QKV = re.compile(r"^layer\.(\d+)\.attention\.([qkv])_proj\.(weight|bias)$")


def layout_of(state: Mapping[str, torch.Tensor]) -> str:
    """``"timm"``, ``"transformers"`` or ``"official"``, from the keys of a DINOv3 ViT state dict."""
    if any(key.startswith(("embeddings.", "model.layer.", "layer.")) for key in state):
        return "transformers"
    if "reg_token" in state or any(key.endswith((".gamma_1", ".attn.q_bias")) for key in state):
        return "timm"
    return "official"


def _rename(state: Mapping[str, torch.Tensor], rules: tuple[tuple[str, str], ...]) -> StateDict:
    out: StateDict = {}
    for key, value in state.items():
        for pattern, replacement in rules:
            key = re.sub(pattern, replacement, key)
        out[key] = value
    return out


def _fill_official_extras(state: StateDict, arch: DinoV3Config) -> StateDict:
    """Add the entries that timm / transformers files never carry (see the module docstring)."""
    dim = arch.embed_dim
    state.setdefault("mask_token", torch.zeros(1, dim))
    if arch.pos_embed_rope_base is not None:
        state.setdefault("rope_embed.periods", released_periods(arch.head_dim, arch.pos_embed_rope_base))
    if arch.untie_global_and_local_cls_norm:
        state.setdefault("local_cls_norm.weight", torch.ones(dim))
        state.setdefault("local_cls_norm.bias", torch.zeros(dim))
    for index in range(arch.depth):
        qkv = f"blocks.{index}.attn.qkv"
        if arch.qkv_bias:
            state.setdefault(f"{qkv}.bias", torch.zeros(3 * dim))
            if arch.mask_k_bias:
                state.setdefault(f"{qkv}.bias_mask", torch.tensor([1.0, 0.0, 1.0]).repeat_interleave(dim))
    return state


def timm_to_official(state: Mapping[str, torch.Tensor], arch: DinoV3Config) -> StateDict:
    """timm ``Eva`` DINOv3 keys (``reg_token``, ``gamma_1/2``, ``fc1_g/x``, ``q_bias/v_bias``) -> official.

    Example:
        >>> arch = DinoV3Config(embed_dim=8, depth=1, num_heads=2, n_storage_tokens=1, mask_k_bias=True)
        >>> state = {"reg_token": torch.zeros(1, 1, 8), "blocks.0.gamma_1": torch.ones(8)}
        >>> sorted(timm_to_official(state, arch))[:4]
        ['blocks.0.attn.qkv.bias', 'blocks.0.attn.qkv.bias_mask', 'blocks.0.ls1.gamma', 'mask_token']
    """
    swiglu = DINOV3_FFN_ALIGN[arch.ffn_layer] is not None
    rules = _TIMM_RENAMES + (((r"^blocks\.(\d+)\.mlp\.fc2\.", r"blocks.\1.mlp.w3."),) if swiglu else ())
    out = _rename(state, rules)
    for index in range(arch.depth):
        prefix = f"blocks.{index}.attn"
        if f"{prefix}.q_bias" in out and f"{prefix}.v_bias" in out:
            q_bias, v_bias = out.pop(f"{prefix}.q_bias"), out.pop(f"{prefix}.v_bias")
            out[f"{prefix}.qkv.bias"] = torch.cat([q_bias, torch.zeros_like(q_bias), v_bias])
    return _fill_official_extras(out, arch)


def transformers_to_official(state: Mapping[str, torch.Tensor], arch: DinoV3Config) -> StateDict:
    """HF ``DINOv3ViTModel`` keys (``embeddings.*``, ``layer.N.attention.{q,k,v,o}_proj``, ...) -> official.

    Accepts ``layer.N`` (Hub files) and ``model.layer.N`` (the module's own names).
    """
    swiglu = DINOV3_FFN_ALIGN[arch.ffn_layer] is not None
    ffn = (((r"^layer\.(\d+)\.mlp\.up_proj\.", r"blocks.\1.mlp.w2."),
            (r"^layer\.(\d+)\.mlp\.down_proj\.", r"blocks.\1.mlp.w3.")) if swiglu else
           ((r"^layer\.(\d+)\.mlp\.up_proj\.", r"blocks.\1.mlp.fc1."),
            (r"^layer\.(\d+)\.mlp\.down_proj\.", r"blocks.\1.mlp.fc2.")))
    plain = {key.removeprefix("model."): value for key, value in state.items()}
    parts: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    rest: StateDict = {}
    for key, value in plain.items():
        match = _HF_QKV.match(key)
        if match:
            parts.setdefault((match.group(1), match.group(3)), {})[match.group(2)] = value
        else:
            rest[key] = value
    out = _rename(rest, _HF_RENAMES + ffn)
    if "mask_token" in out:
        out["mask_token"] = out["mask_token"].reshape(1, -1)
    if "storage_tokens" in out and out["storage_tokens"].shape[1] == 0:
        del out["storage_tokens"]
    for (index, param), qkv in parts.items():
        if param == "bias":
            qkv.setdefault("k", torch.zeros_like(qkv["q"]))  # no key bias: masked in the official model
        missing = sorted(set("qkv") - set(qkv))
        if missing:
            raise KeyError(f"transformers weights lack layer.{index}.attention.{missing}_proj.{param}")
        out[f"blocks.{index}.attn.qkv.{param}"] = torch.cat([qkv["q"], qkv["k"], qkv["v"]])
    return _fill_official_extras(out, arch)


def to_official(state: Mapping[str, torch.Tensor], arch: DinoV3Config) -> StateDict:
    """Any supported DINOv3 ViT layout (official, timm, transformers) -> the official keys.

    A file with a learned position table (``pos_embed``: DINO / DINOv2) is returned as it is,
    so that strict loading names what does not fit instead of this function filling it in.
    """
    if any(key.endswith("pos_embed") or "position_embeddings" in key for key in state):
        return dict(state)
    layout = layout_of(state)
    if layout == "timm":
        return timm_to_official(state, arch)
    if layout == "transformers":
        return transformers_to_official(state, arch)
    return dict(state)


def dinov3_config_from_transformers(config: Mapping[str, Any]) -> DinoV3Config:
    """A :class:`DinoV3Config` from an HF ``DINOv3ViTConfig`` dict (``model_type`` ``dinov3_vit``).

    The FFN is described by ``intermediate_size``; for a gated MLP the official ``ffn_ratio``
    (whose 2/3, aligned to 8, is the hidden width) is recovered from it and checked.
    """
    eps = float(config.get("layer_norm_eps", 1e-5))
    if eps not in (1e-5, 1e-6):
        raise ValueError(f"unsupported layer_norm_eps {eps} (DINOv3 uses 1e-5 or 1e-6)")
    dim = int(config["hidden_size"])
    hidden = int(config["intermediate_size"])
    gated = bool(config.get("use_gated_mlp", False))
    activation = config.get("hidden_act", "silu" if gated else "gelu")
    if activation != ("silu" if gated else "gelu"):  # the official FFNs: SwiGLU, or an exact-GELU MLP
        raise ValueError(f"unsupported hidden_act {activation!r} for use_gated_mlp={gated} (DINOv3: "
                         f"{'silu' if gated else 'gelu'})")
    ratio = hidden * 1.5 / dim if gated else hidden / dim
    arch = DinoV3Config(
        embed_dim=dim,
        depth=int(config["num_hidden_layers"]),
        num_heads=int(config["num_attention_heads"]),
        patch_size=int(config.get("patch_size", 16)),
        in_chans=int(config.get("num_channels", 3)),
        ffn_ratio=ratio,
        ffn_layer="swiglu" if gated else "mlp",
        ffn_bias=bool(config.get("mlp_bias", True)),
        proj_bias=bool(config.get("proj_bias", True)),
        qkv_bias=bool(config.get("query_bias", True)),
        mask_k_bias=not config.get("key_bias", False),
        n_storage_tokens=int(config.get("num_register_tokens", 0)),
        layerscale_init=float(config.get("layerscale_value", 1.0)),
        norm_layer="layernormbf16" if eps == 1e-5 else "layernorm",
        pos_embed_rope_base=float(config.get("rope_theta", 100.0)),
        pos_embed_rope_rescale_coords=config.get("pos_embed_rescale"),
        pos_embed_rope_dtype="fp32",
    )
    if gated:
        width = int(int(dim * ratio) * 2 / 3)
        if width + (-width % 8) != hidden:
            raise ValueError(f"intermediate_size {hidden} is not an official SwiGLU width for "
                             f"hidden_size {dim}")
    return arch
