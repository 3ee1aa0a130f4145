"""The configuration of a DINOv3 RoPE Vision Transformer, with the official builder's keyword names."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

#: ``ffn_layer`` values of the official DINOv3 builder -> SwiGLU hidden-width alignment (None: GELU MLP).
DINOV3_FFN_ALIGN: dict[str, int | None] = {"mlp": None, "swiglu": 8, "swiglu32": 32, "swiglu64": 64,
                                           "swiglu128": 128}


#: ``norm_layer`` values of the official DINOv3 builder -> LayerNorm epsilon.
DINOV3_NORM_EPS: dict[str, float] = {"layernorm": 1e-6, "layernormbf16": 1e-5}


DINOV3_ROPE_DTYPES = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class DinoV3Config:
    """Hyper-parameters of a DINOv3 RoPE Vision Transformer, named as the official builder's keywords.

    The defaults are the official ``DinoVisionTransformer`` defaults; the released backbones set
    ``n_storage_tokens=4, layerscale_init=1e-5, norm_layer="layernormbf16", mask_k_bias=True,
    pos_embed_rope_rescale_coords=2, pos_embed_rope_dtype="fp32"`` (see :mod:`dinofeat.registry`).

    Attributes:
        embed_dim: Token width D.
        depth: Number of blocks.
        num_heads: Attention heads per block.
        patch_size: Side of a square patch in pixels.
        in_chans: Input channels.
        img_size: Accepted for the official signature; no effect (RoPE has no position table).
        ffn_ratio: FFN hidden width as a multiple of ``embed_dim`` (SwiGLU then takes 2/3 of it, aligned).
        ffn_layer: ``"mlp"`` (GELU) or ``"swiglu"`` / ``"swiglu32"`` / ``"swiglu64"`` / ``"swiglu128"``.
        ffn_bias: Bias in the FFN linears.
        proj_bias: Bias in the attention output projection.
        qkv_bias: Bias in the qkv projection.
        mask_k_bias: The qkv bias is multiplied by a stored ``bias_mask`` (zero for the keys).
        n_storage_tokens: Storage (register) tokens after CLS.
        layerscale_init: Initial LayerScale value; None: no LayerScale.
        norm_layer: ``"layernorm"`` (eps 1e-6) or ``"layernormbf16"`` (eps 1e-5).
        untie_cls_and_patch_norms: CLS and storage tokens get their own final norm (``cls_norm``).
        untie_global_and_local_cls_norm: Adds ``local_cls_norm``, used in training only.
        pos_embed_rope_base: RoPE period base; None to use ``min_period`` / ``max_period`` instead.
        pos_embed_rope_min_period: Shortest RoPE period (with ``max_period``, instead of ``base``).
        pos_embed_rope_max_period: Longest RoPE period.
        pos_embed_rope_normalize_coords: Patch-centre coordinates divided by each side (``"separate"``)
            or by the longer (``"max"``) / shorter (``"min"``) side.
        pos_embed_rope_shift_coords: Train mode only: RoPE coordinates shifted by a draw uniform in
            ``[-s, s]`` per axis (a new draw per block and crop group).
        pos_embed_rope_jitter_coords: Train mode only: coordinates scaled by a log-uniform draw in
            ``[1/j, j]`` per axis.
        pos_embed_rope_rescale_coords: Train mode only: both axes scaled by one log-uniform draw in
            ``[1/r, r]`` (the released models: 2).
        pos_embed_rope_dtype: dtype of the RoPE periods, angles and rotated q / k. (Official training
            ignores it and uses bf16: see ``DinoV3VisionTransformer.forward_training``.)
        drop_path_rate: Stochastic depth of every block, train mode only (the official subset version:
            ``max(int(B (1 - p)), 1)`` samples go through each residual branch, added back scaled by
            ``B / subset``). Left out of :meth:`to_dict` at 0, so configs written before it existed
            read and write back the same.
    """

    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int = 16
    in_chans: int = 3
    img_size: int = 224
    ffn_ratio: float = 4.0
    ffn_layer: Literal["mlp", "swiglu", "swiglu32", "swiglu64", "swiglu128"] = "mlp"
    ffn_bias: bool = True
    proj_bias: bool = True
    qkv_bias: bool = True
    mask_k_bias: bool = False
    n_storage_tokens: int = 0
    layerscale_init: float | None = None
    norm_layer: Literal["layernorm", "layernormbf16"] = "layernorm"
    untie_cls_and_patch_norms: bool = False
    untie_global_and_local_cls_norm: bool = False
    pos_embed_rope_base: float | None = 100.0
    pos_embed_rope_min_period: float | None = None
    pos_embed_rope_max_period: float | None = None
    pos_embed_rope_normalize_coords: Literal["min", "max", "separate"] = "separate"
    pos_embed_rope_shift_coords: float | None = None
    pos_embed_rope_jitter_coords: float | None = None
    pos_embed_rope_rescale_coords: float | None = None
    pos_embed_rope_dtype: Literal["fp32", "fp16", "bf16"] = "bf16"
    family: Literal["dinov3"] = "dinov3"
    drop_path_rate: float = 0.0

    def __post_init__(self) -> None:
        for name in ("embed_dim", "depth", "num_heads", "patch_size", "in_chans", "img_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"DinoV3Config.{name} must be a positive integer, got {value!r}")
        if self.embed_dim % (4 * self.num_heads):
            raise ValueError(f"DinoV3Config.embed_dim ({self.embed_dim}) must be divisible by 4 * num_heads "
                             f"({4 * self.num_heads}): RoPE splits each head into four quarters")
        choices: dict[str, Sequence[str]] = {
            "ffn_layer": list(DINOV3_FFN_ALIGN),
            "norm_layer": list(DINOV3_NORM_EPS),
            "pos_embed_rope_normalize_coords": ["min", "max", "separate"],
            "pos_embed_rope_dtype": DINOV3_ROPE_DTYPES,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"DinoV3Config.{name} must be one of {list(allowed)}, "
                                 f"got {getattr(self, name)!r}")
        if not isinstance(self.n_storage_tokens, int) or self.n_storage_tokens < 0:
            raise ValueError(f"DinoV3Config.n_storage_tokens must be >= 0, got {self.n_storage_tokens!r}")
        self._check_training_fields()
        periods = (self.pos_embed_rope_min_period, self.pos_embed_rope_max_period)
        by_range = self.pos_embed_rope_base is None and all(p is not None for p in periods)
        by_base = self.pos_embed_rope_base is not None and all(p is None for p in periods)
        if not (by_range or by_base):
            raise ValueError("DinoV3Config: give either pos_embed_rope_base or both "
                             "pos_embed_rope_min_period and pos_embed_rope_max_period, "
                             f"got base={self.pos_embed_rope_base}, "
                             f"min/max={periods}")

    def _check_training_fields(self) -> None:
        rate = self.drop_path_rate
        if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0.0 <= rate < 1.0:
            raise ValueError(f"DinoV3Config.drop_path_rate must lie in [0, 1), got {rate!r}")
        if self.pos_embed_rope_shift_coords is not None and self.pos_embed_rope_shift_coords < 0:
            raise ValueError("DinoV3Config.pos_embed_rope_shift_coords must be >= 0 or None, "
                             f"got {self.pos_embed_rope_shift_coords!r}")
        for name in ("pos_embed_rope_jitter_coords", "pos_embed_rope_rescale_coords"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"DinoV3Config.{name} must be >= 1 or None (a log-uniform factor in "
                                 f"[1/v, v]), got {value!r}")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def num_prefix_tokens(self) -> int:
        """CLS plus storage tokens, which precede the patch tokens in the sequence."""
        return 1 + self.n_storage_tokens

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if not self.drop_path_rate:
            del data["drop_path_rate"]
        return data
