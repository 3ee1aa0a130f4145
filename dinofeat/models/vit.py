"""DINO / DINOv2 Vision Transformer on top of timm, with the official numerics.

:class:`DinoVisionTransformer` *is* a ``timm`` ``VisionTransformer`` (same modules, same
state-dict keys as the official checkpoints), with one forward path that yields everything
dinofeat serves from a single pass: final-normed tokens, the last block's CLS attention and
any intermediate blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial

import torch
from timm.layers.mlp import Mlp, SwiGLUPacked
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from dinofeat.config import ViTConfig
from dinofeat.models.attention import block_with_cls_attention
from dinofeat.models.pos_embed import interpolate_pos_embed


@dataclass
class TokenOutput:
    """Everything one forward pass of a :class:`DinoVisionTransformer` produces.

    Attributes:
        tokens: (B, P + h*w, D) output of the last block through the final norm; P prefix
            tokens (CLS, then registers), then the patch tokens row by row.
        grid: Patch grid (h, w).
        num_prefix: P.
        cls_attention: (B, heads, P + h*w) softmax row of the CLS query in the last block, or None.
        intermediates: Outputs of the requested blocks, each through the final norm, in block order.
    """

    tokens: torch.Tensor
    grid: tuple[int, int]
    num_prefix: int
    cls_attention: torch.Tensor | None = None
    intermediates: list[torch.Tensor] = field(default_factory=list)

    @property
    def cls(self) -> torch.Tensor:
        return self.tokens[:, 0]

    @property
    def patches(self) -> torch.Tensor:
        return self.tokens[:, self.num_prefix:]


class DinoVisionTransformer(VisionTransformer):
    """A timm ViT configured by a :class:`~dinofeat.config.ViTConfig`.

    ``forward(x)`` returns the CLS feature after the final norm, as the official DINO model does.

    Example:
        >>> from dinofeat.config import ViTConfig
        >>> cfg = ViTConfig(patch_size=8, embed_dim=32, depth=2, num_heads=2, img_size=32)
        >>> vit = DinoVisionTransformer(cfg)
        >>> vit(torch.randn(1, 3, 40, 48)).shape
        torch.Size([1, 32])
    """

    def __init__(self, config: ViTConfig) -> None:
        swiglu = config.mlp == "swiglu"
        super().__init__(
            img_size=config.img_size,
            patch_size=config.patch_size,
            in_chans=config.in_chans,
            embed_dim=config.embed_dim,
            depth=config.depth,
            num_heads=config.num_heads,
            mlp_ratio=config.mlp_ratio,
            qkv_bias=config.qkv_bias,
            init_values=config.layer_scale_init,
            reg_tokens=config.num_register_tokens,
            no_embed_class=not config.pos_embed_has_cls,
            num_classes=0,
            global_pool="token",
            norm_layer=partial(nn.LayerNorm, eps=config.layer_norm_eps),
            mlp_layer=SwiGLUPacked if swiglu else Mlp,  # type: ignore[arg-type]  # a partial is a class here
            act_layer=nn.SiLU if swiglu else nn.GELU,
            drop_path_rate=config.drop_path_rate,
            dynamic_img_size=True,
        )
        self.config = config

    def _pos_embed_for(self, image_hw: tuple[int, int], grid_hw: tuple[int, int]) -> torch.Tensor:
        assert self.pos_embed is not None
        return interpolate_pos_embed(
            self.pos_embed,
            image_hw=image_hw,
            grid_hw=grid_hw,
            num_prefix=0 if self.no_embed_class else self.num_prefix_tokens,
            offset=self.config.interpolate_offset,
            antialias=self.config.interpolate_antialias,
        )

    def embed_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch embedding + prefix tokens + position embedding: the input of block 0."""
        channels = self.config.in_chans
        if x.ndim != 4 or x.shape[1] != channels:
            raise ValueError(f"expected images of shape (N, {channels}, H, W), got {tuple(x.shape)}")
        batch, _, height, width = x.shape
        patch = self.config.patch_size
        if height < patch or width < patch:
            raise ValueError(f"image of {height}x{width} px is smaller than one {patch}x{patch} patch")
        # The official stride-P convolution drops remainder pixels; timm asserts instead.
        x = x[:, :, : height - height % patch, : width - width % patch]
        x = self.patch_embed(x)  # (B, h, w, D): dynamic_img_size keeps the grid
        _, h, w, dim = x.shape
        x = x.reshape(batch, h * w, dim)
        pos = self._pos_embed_for((height, width), (h, w))
        assert self.cls_token is not None  # DINO models always have a CLS token
        prefix = [self.cls_token.expand(batch, -1, -1)]
        if self.reg_token is not None:
            prefix.append(self.reg_token.expand(batch, -1, -1))
        if self.no_embed_class:
            x = torch.cat([*prefix, x + pos], dim=1)
        else:
            x = torch.cat([*prefix, x], dim=1) + pos
        x = self.norm_pre(self.patch_drop(self.pos_drop(x)))
        return x, (h, w)

    def forward_tokens(
        self,
        x: torch.Tensor,
        *,
        cls_attention: bool = False,
        blocks: Sequence[int] = (),
    ) -> TokenOutput:
        """One forward pass returning tokens, optional CLS attention and intermediate blocks.

        Args:
            x: Normalised images (B, 3, H, W); any size of at least one patch.
            cls_attention: Also return the last block's CLS-query attention.
            blocks: Indices of blocks (negative counts from the end) whose outputs, each through
                the final norm, go into ``intermediates``.
        """
        depth = len(self.blocks)
        wanted = sorted({b % depth for b in blocks})
        if any(not -depth <= b < depth for b in blocks):
            raise IndexError(f"block indices {list(blocks)} out of range for depth {depth}")
        x, grid = self.embed_tokens(x)
        attention = None
        intermediates = []
        for index, block in enumerate(self.blocks):
            if cls_attention and index == depth - 1:
                x, attention = block_with_cls_attention(block, x)
            else:
                x = block(x)
            if index in wanted:
                intermediates.append(self.norm(x))
        tokens = intermediates[-1] if wanted and wanted[-1] == depth - 1 else self.norm(x)
        return TokenOutput(tokens, grid, self.num_prefix_tokens, attention, intermediates)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """CLS token after the final norm, (B, D)."""
        return self.forward_tokens(x).cls
