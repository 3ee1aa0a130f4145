"""The configuration of a DINO / DINOv2 Vision Transformer."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class ViTConfig:
    """Hyper-parameters of a DINO / DINOv2 Vision Transformer.

    Attributes:
        patch_size: Side of a square patch in pixels.
        embed_dim: Token width D.
        depth: Number of transformer blocks.
        num_heads: Attention heads per block.
        mlp_ratio: Hidden width of the MLP as a multiple of ``embed_dim``.
        qkv_bias: Whether the qkv projection has a bias.
        layer_norm_eps: Epsilon of every LayerNorm (1e-6 for the DINO models).
        img_size: Training resolution; the stored position grid is ``img_size // patch_size``.
        num_register_tokens: DINOv2 register tokens (0 or 4).
        layer_scale_init: Initial LayerScale value (DINOv2 uses 1e-5); ``None`` disables LayerScale.
        mlp: ``"gelu"`` for the standard MLP, ``"swiglu"`` for DINOv2-giant's packed SwiGLU.
        pos_embed_has_cls: Whether ``pos_embed`` has a row for the CLS token (DINO, DINOv2 without
            registers, and DINOv2 with registers as the official code trains them: registers inserted after
            the positions, with none of their own) or covers the patches only (DINOv2 with registers in
            timm's layout, the CLS position folded into ``cls_token``).
        interpolate_offset: The official ``+0.1`` of the position-embedding resampling; 0 resamples to a size.
        interpolate_antialias: Antialiased bicubic resampling (DINOv2 register models).
        drop_path_rate: Stochastic depth, used by the trainer's student only.
        in_chans: Input channels of the patch embedding (3 for RGB; C for a C-band model).
    """

    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    layer_norm_eps: float = 1e-6
    img_size: int = 224
    num_register_tokens: int = 0
    layer_scale_init: float | None = None
    mlp: Literal["gelu", "swiglu"] = "gelu"
    pos_embed_has_cls: bool = True
    interpolate_offset: float = 0.1
    interpolate_antialias: bool = False
    drop_path_rate: float = 0.0
    family: Literal["vit"] = "vit"
    in_chans: int = 3

    def __post_init__(self) -> None:
        for name in ("patch_size", "embed_dim", "depth", "num_heads", "img_size", "in_chans"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"ViTConfig.{name} must be a positive integer, got {value!r}")
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"ViTConfig.embed_dim ({self.embed_dim}) must be divisible by num_heads ({self.num_heads})"
            )
        if self.img_size % self.patch_size:
            raise ValueError(
                f"ViTConfig.img_size ({self.img_size}) must be a multiple of patch_size ({self.patch_size})"
            )
        if self.num_register_tokens < 0:
            raise ValueError("ViTConfig.num_register_tokens must be >= 0")

    @property
    def num_prefix_tokens(self) -> int:
        """CLS plus register tokens, which precede the patch tokens in the sequence."""
        return 1 + self.num_register_tokens

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
