"""Attention masks as in the DINO paper's figures: keep the patches holding a given share of the attention.

Same semantics as the official ``visualize_attention.py``: per head, sort the patch
attention values ascending, divide by their sum (the CLS key is not part of the maps),
take the cumulative sum and keep a patch iff its cumulative value is strictly greater than
``1 - threshold``. With ``threshold=0.6`` the kept set is the largest-attention patches
holding about 60 % of the patch attention mass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attention_masks(attn: torch.Tensor, threshold: float = 0.6) -> torch.Tensor:
    """Boolean masks of the patches that hold ``threshold`` of each map's attention mass.

    Args:
        attn: Attention maps (..., h, w), e.g. (heads, h, w) or (N, heads, h, w) from
            :meth:`~dinofeat.features.extractor.FeatureExtractor.cls_attention`; each (h, w) map is one head.
        threshold: Share of the mass to keep, in (0, 1].

    Returns:
        A bool tensor shaped like ``attn``.

    Example:
        >>> maps = torch.tensor([[[0.1, 0.2], [0.3, 0.4]]])
        >>> attention_masks(maps, threshold=0.6)
        tensor([[[False, False],
                 [ True,  True]]])
    """
    if attn.ndim < 2:
        raise ValueError(f"attention maps must have shape (..., h, w), got {tuple(attn.shape)}")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    flat = attn.reshape(-1, attn.shape[-2] * attn.shape[-1])
    values, order = torch.sort(flat, dim=-1)
    values = values / values.sum(dim=-1, keepdim=True)
    cumulative = torch.cumsum(values, dim=-1)
    kept_sorted = cumulative > (1 - threshold)
    kept = torch.empty_like(kept_sorted)
    kept.scatter_(-1, order, kept_sorted)
    return kept.reshape(attn.shape)


def upsample_to_pixels(maps: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Nearest-neighbour upsampling by the patch size: (..., h, w) -> (..., h*P, w*P).

    Each value becomes a P x P block, as in the official visualisation.

    Example:
        >>> upsample_to_pixels(torch.arange(4.0).reshape(1, 1, 2, 2), 2)[0, 0]
        tensor([[0., 0., 1., 1.],
                [0., 0., 1., 1.],
                [2., 2., 3., 3.],
                [2., 2., 3., 3.]])
    """
    if maps.ndim < 2:
        raise ValueError(f"maps must have shape (..., h, w), got {tuple(maps.shape)}")
    lead = maps.shape[:-2]
    flat = maps.reshape(1, -1, *maps.shape[-2:])
    dtype = flat.dtype
    up = F.interpolate(flat.float() if dtype == torch.bool else flat, scale_factor=patch_size, mode="nearest")
    return up.to(dtype).reshape(*lead, *up.shape[-2:])
