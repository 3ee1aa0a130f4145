"""Token maps at pixel resolution: bilinear upsampling of patch tokens (or any (h, w) maps).

This is the training-free baseline. A learned upsampler (FeatUp, LoftUp, AnyUp, JAFAR) takes the
same (N, D, h, w) low-resolution features plus the image and returns (N, D, H, W); see
docs/dense.md for plugging one in.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def upsample_tokens(tokens: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """(N, h, w, D) or (h, w, D) patch tokens -> (N, H, W, D) / (H, W, D) by interpolation.

    Args:
        tokens: Patch tokens, channels last as ``patch_tokens`` gives them.
        size: Output (H, W), e.g. the network input size (h * P, w * P).
        mode: ``"bilinear"`` (default, ``align_corners=False``: patch centres stay at pixel centres
            of their patch) or ``"nearest"`` / ``"bicubic"``.

    Example:
        >>> upsample_tokens(torch.randn(2, 4, 6, 8), (32, 48)).shape
        torch.Size([2, 32, 48, 8])
    """
    return _channels_last(upsample_maps(_channels_first(tokens), size, mode))


def upsample_maps(maps: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """(..., h, w) maps (similarity, attention, one channel per leading index) -> (..., H, W)."""
    if maps.ndim < 2:
        raise ValueError(f"maps must be (..., h, w), got {tuple(maps.shape)}")
    if min(size) <= 0:
        raise ValueError(f"size must be positive, got {size}")
    if mode not in ("bilinear", "bicubic", "nearest"):
        raise ValueError(f"unknown upsampling mode {mode!r}; choose bilinear, bicubic or nearest")
    lead = maps.shape[:-2]
    flat = maps.reshape(1, -1, *maps.shape[-2:]).float()
    smooth = {"align_corners": False} if mode != "nearest" else {}
    up = F.interpolate(flat, size=size, mode=mode, **smooth)
    return up.reshape(*lead, *size)


def _channels_first(tokens: torch.Tensor) -> torch.Tensor:
    if tokens.ndim not in (3, 4):
        raise ValueError(f"tokens must be (N, h, w, D) or (h, w, D), got {tuple(tokens.shape)}")
    return tokens.movedim(-1, -3)


def _channels_last(maps: torch.Tensor) -> torch.Tensor:
    return maps.movedim(-3, -1)
