"""DINO / DINOv2 Vision Transformer on top of timm, with the official numerics.

:class:`DinoVisionTransformer` *is* a ``timm`` ``VisionTransformer`` (same modules, same
state-dict keys as the official checkpoints), with one forward path that yields everything
dinofeat serves from a single pass: final-normed tokens, the last block's CLS attention and
any intermediate blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from timm.layers.mlp import Mlp, SwiGLUPacked
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from dinofeat.models.attention import block_with_cls_attention
from dinofeat.models.stochastic_depth import KeptSamplesBlock
from dinofeat.models.tokens import TokenOutput, check_images, check_patch_stride, selected_blocks
from dinofeat.models.vit.config import ViTConfig
from dinofeat.models.vit.pos_embed import interpolate_pos_embed, strided_pos_embed


class DinoVisionTransformer(VisionTransformer):
    """A timm ViT configured by a :class:`~dinofeat.models.vit.config.ViTConfig`.

    ``forward(x)`` returns the CLS feature after the final norm, as the official DINO model does.

    Example:
        >>> from dinofeat.config.preprocess import ViTConfig
        >>> cfg = ViTConfig(patch_size=8, embed_dim=32, depth=2, num_heads=2, img_size=32)
        >>> vit = DinoVisionTransformer(cfg)
        >>> vit(torch.randn(1, 3, 40, 48)).shape
        torch.Size([1, 32])
    """

    has_attention = True
    mask_token: nn.Parameter | None

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
            block_fn=KeptSamplesBlock,  # timm's block; drop-path skips the dropped samples' branches
        )
        self.config = config
        if self.reg_token is not None and config.pos_embed_has_cls:
            # The official DINOv2 layout: positions for CLS and the patches; the registers, inserted after
            # CLS once the positions are added, have none (timm would give them rows of their own).
            assert self.pos_embed is not None
            rows = self.patch_embed.num_patches + 1
            self.pos_embed = nn.Parameter(torch.zeros(1, rows, config.embed_dim))
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.register_parameter("mask_token", None)

    def add_mask_token(self) -> None:
        """Give the network DINOv2's iBOT mask token (zeros, ``(1, D)``), a training-only parameter: the
        student's masked patches are replaced by it (``forward_tokens(x, masks=...)``). An exported model has
        none; its state-dict key ``mask_token`` is dropped on loading like the official one."""
        self.mask_token = nn.Parameter(torch.zeros(1, self.config.embed_dim))

    @property
    def pos_embed_prefix(self) -> int:
        """Rows of ``pos_embed`` before the patch positions: 1 (CLS) or 0 (timm's register layout)."""
        return 0 if self.no_embed_class else 1

    @property
    def depth(self) -> int:
        return len(self.blocks)

    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    def _pos_embed_for(self, image_hw: tuple[int, int], grid_hw: tuple[int, int]) -> torch.Tensor:
        assert self.pos_embed is not None
        return interpolate_pos_embed(
            self.pos_embed,
            image_hw=image_hw,
            grid_hw=grid_hw,
            num_prefix=self.pos_embed_prefix,
            offset=self.config.interpolate_offset,
            antialias=self.config.interpolate_antialias,
        )

    def _strided_patches(self, x: torch.Tensor, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Overlapping patch embedding (B, h, w, D) with stride ``stride``, and its position table."""
        patch = self.config.patch_size
        height, width = x.shape[-2:]
        check_patch_stride(stride, patch, height, width)
        proj = self.patch_embed.proj
        tokens = F.conv2d(x, proj.weight, proj.bias, stride=stride).permute(0, 2, 3, 1)
        assert self.pos_embed is not None
        pos = strided_pos_embed(
            self.pos_embed,
            image_hw=(height, width),
            patch_size=patch,
            stride=stride,
            num_prefix=self.pos_embed_prefix,
            offset=self.config.interpolate_offset,
            antialias=self.config.interpolate_antialias,
        )
        return self.patch_embed.norm(tokens), pos

    def embed_tokens(self, x: torch.Tensor, patch_stride: int | None = None,
                     masks: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch embedding + prefix tokens + position embedding: the input of block 0.

        Args:
            x: Normalised images (B, C, H, W), C = ``config.in_chans``.
            patch_stride: Overlapping patches (see :meth:`forward_tokens`); None or the patch size
                for the ordinary grid.
            masks: (B, h*w) bool, patches replaced by the mask token before the positions are added
                (DINOv2's iBOT student; needs :meth:`add_mask_token`).
        """
        patch = self.config.patch_size
        check_images(x, self.config.in_chans, patch_size=patch)
        batch, _, height, width = x.shape
        if patch_stride is None or patch_stride == patch:
            # The official stride-P convolution drops remainder pixels; timm asserts instead.
            x = x[:, :, : height - height % patch, : width - width % patch]
            x = self.patch_embed(x)  # (B, h, w, D): dynamic_img_size keeps the grid
            pos = self._pos_embed_for((height, width), (x.shape[1], x.shape[2]))
        else:
            x, pos = self._strided_patches(x, patch_stride)
        _, h, w, dim = x.shape
        x = x.reshape(batch, h * w, dim)
        if masks is not None:
            if self.mask_token is None:
                raise ValueError("masks need the iBOT mask token: call add_mask_token() first")
            x = torch.where(masks.unsqueeze(-1), self.mask_token.to(x.dtype).unsqueeze(0), x)
        assert self.cls_token is not None  # DINO models always have a CLS token
        cls = self.cls_token.expand(batch, -1, -1)
        registers = [] if self.reg_token is None else [self.reg_token.expand(batch, -1, -1)]
        if self.no_embed_class:
            x = torch.cat([cls, *registers, x + pos], dim=1)
        else:
            x = torch.cat([cls, x], dim=1) + pos
            if registers:
                x = torch.cat([x[:, :1], *registers, x[:, 1:]], dim=1)
        x = self.norm_pre(self.patch_drop(self.pos_drop(x)))
        return x, (h, w)

    def forward_tokens(
        self,
        x: torch.Tensor,
        *,
        cls_attention: bool = False,
        blocks: Sequence[int] = (),
        patch_stride: int | None = None,
        masks: torch.Tensor | None = None,
    ) -> TokenOutput:
        """One forward pass returning tokens, optional CLS attention and intermediate blocks.

        Args:
            x: Normalised images (B, 3, H, W); any size of at least one patch.
            cls_attention: Also return the last block's CLS-query attention.
            blocks: Indices of blocks (negative counts from the end) whose outputs, each through
                the final norm, go into ``intermediates``.
            patch_stride: Patch-embedding stride ``s`` (``1 <= s <= P``) for overlapping patches:
                a ((H - P) / s + 1) x ((W - P) / s + 1) grid, ``s`` dividing H - P and W - P; the
                position table is evaluated at the new patch centres
                (:func:`~dinofeat.models.vit.pos_embed.strided_pos_embed`). None or P: the ordinary
                forward, bit for bit.
            masks: (B, h*w) bool: the iBOT student's masked patches (:meth:`embed_tokens`).
        """
        depth = len(self.blocks)
        wanted = selected_blocks(blocks, depth)
        x, grid = self.embed_tokens(x, patch_stride, masks)
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
        return TokenOutput(tokens, grid, self.num_prefix_tokens, attention, intermediates,
                           [grid] * len(intermediates))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """CLS token after the final norm, (B, D).

        In training mode (DINO's student and teacher read only this) the last block runs on the CLS
        row only (``first_token_only=True``, :class:`KeptSamplesBlock`); in eval mode it is
        ``forward_tokens(x).cls`` bit for bit.
        """
        if not self.training:
            return self.forward_tokens(x).cls
        x, _ = self.embed_tokens(x)
        for block in self.blocks[:-1]:
            x = block(x)
        cls: torch.Tensor = self.norm(self.blocks[-1](x, first_token_only=True))[:, 0]
        return cls
