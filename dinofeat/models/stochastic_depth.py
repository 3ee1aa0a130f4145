"""Stochastic depth that computes each residual branch only for the samples it keeps.

The DINO / DINOv2 ViT's block (:class:`~dinofeat.models.DinoVisionTransformer`); in eval mode or at
drop-path rate 0 it is timm's block. timm's ``DropPath`` computes a branch for the whole batch and then
multiplies the dropped samples' rows by zero. :class:`KeptSamplesBlock` draws the same mask, with
the same call on the same generator at the same point of the block (``x.new_empty((B, 1, 1))
.bernoulli_(keep)``, scaled by ``1 / keep``), runs the branch on the kept rows only and adds them
back: the kept rows get ``x + branch(x) * (1 / keep)`` as before, the dropped rows ``x``. With the
drop-path rates rising linearly to 0.1 this skips about 5 % of the student's block arithmetic.
Every operation in a ViT branch (layer norm, attention within an image, MLP) is per-sample, so the
result does not depend on which other rows are in the batch (tested against timm's block).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from timm.layers.drop import DropPath
from timm.models.vision_transformer import Block
from torch import nn


def kept_samples_residual(x: torch.Tensor, branch: Callable[[torch.Tensor], torch.Tensor],
                          drop: nn.Module) -> torch.Tensor:
    """``x + drop(branch(x))``, with ``branch`` run only on the rows that ``drop`` keeps.

    Example:
        >>> x = torch.ones(4, 2, 3)
        >>> torch.equal(kept_samples_residual(x, lambda y: 2 * y, nn.Identity()), 3 * x)
        True
    """
    if not isinstance(drop, DropPath) or not drop.training or drop.drop_prob == 0.0:
        plain: torch.Tensor = x + drop(branch(x))
        return plain
    keep = 1.0 - drop.drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    if drop.scale_by_keep:
        mask.div_(keep)
    kept = mask.view(-1).nonzero().view(-1)
    if kept.numel() == x.shape[0]:
        return x + branch(x) * mask
    if kept.numel() == 0:
        return x
    return x.index_add(0, kept, branch(x.index_select(0, kept)) * mask.index_select(0, kept))


class KeptSamplesBlock(Block):
    """timm's ViT block (same modules and state-dict keys) with :func:`kept_samples_residual`."""

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False) -> torch.Tensor:
        def attention(y: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.ls1(self.attn(self.norm1(y), attn_mask=attn_mask, is_causal=is_causal))
            return out

        def mlp(y: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.ls2(self.mlp(self.norm2(y)))
            return out

        x = kept_samples_residual(x, attention, self.drop_path1)
        return kept_samples_residual(x, mlp, self.drop_path2)
