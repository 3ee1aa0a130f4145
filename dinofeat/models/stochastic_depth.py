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

In training only the CLS token of the last block is read (DINO's head takes it), so
a ``KeptSamplesBlock`` called with ``first_token_only=True`` runs with one query and computes its
projection, residual and MLP, and their backward, for one row per image: for a 12-block ViT about
7 % of the blocks' arithmetic less, the same function up to rounding.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from timm.layers.drop import DropPath
from timm.models.vision_transformer import Block
from torch import nn

from dinofeat.models.attention import first_query_attention


def kept_samples_residual(x: torch.Tensor, branch: Callable[[torch.Tensor], torch.Tensor],
                          drop: nn.Module, residual: torch.Tensor | None = None) -> torch.Tensor:
    """``residual + drop(branch(x))`` (``residual`` defaults to ``x``), with ``branch`` run only on the
    rows that ``drop`` keeps; ``branch`` maps rows of ``x`` to rows shaped like ``residual``'s.

    Example:
        >>> x = torch.ones(4, 2, 3)
        >>> torch.equal(kept_samples_residual(x, lambda y: 2 * y, nn.Identity()), 3 * x)
        True
    """
    if residual is None:
        residual = x
    if not isinstance(drop, DropPath) or not drop.training or drop.drop_prob == 0.0:
        plain: torch.Tensor = residual + drop(branch(x))
        return plain
    keep = 1.0 - drop.drop_prob
    # timm's DropPath draws its mask like this on the branch output, (B, 1, 1) for any token count.
    mask = residual.new_empty((x.shape[0],) + (1,) * (residual.ndim - 1)).bernoulli_(keep)
    if drop.scale_by_keep:
        mask.div_(keep)
    kept = mask.view(-1).nonzero().view(-1)
    if kept.numel() == x.shape[0]:
        return residual + branch(x) * mask
    if kept.numel() == 0:
        return residual
    # Indexing and index_put rather than index_select / index_add: the same values, bit for bit, and on CPU
    # (torch 2.14) about 10x faster for (B, N, D) activations, forward and backward.
    return residual.index_put((kept,), branch(x[kept]) * mask[kept], accumulate=True)


class KeptSamplesBlock(Block):
    """timm's ViT block (same modules and state-dict keys) with :func:`kept_samples_residual`."""

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False, first_token_only: bool = False) -> torch.Tensor:
        """``first_token_only``: the output at token 0 only, (B, 1, D), for when nothing reads the other
        tokens after this block: the attention still reads every token, the rest runs on one row per
        image (and so does its backward), with the same drop-path draws. A keyword of ``forward`` so
        that module hooks (FSDP's gathering of the parameters) run as for any call."""
        def attention(y: torch.Tensor) -> torch.Tensor:
            normed = self.norm1(y)
            if first_token_only:
                if attn_mask is not None or is_causal:
                    raise ValueError("first_token_only takes no attention mask")
                branch: torch.Tensor = self.ls1(first_query_attention(self.attn, normed))
            else:
                branch = self.ls1(self.attn(normed, attn_mask=attn_mask, is_causal=is_causal))
            return branch

        def mlp(y: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.ls2(self.mlp(self.norm2(y)))
            return out

        x = kept_samples_residual(x, attention, self.drop_path1, residual=x[:, :1] if first_token_only else x)
        return kept_samples_residual(x, mlp, self.drop_path2)
