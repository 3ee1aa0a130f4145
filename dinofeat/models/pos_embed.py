"""Position-embedding resampling, exactly as the official DINO / DINOv2 code does it.

The official rule (``vision_transformer.py`` of facebookresearch/dino) differs from timm's
``resample_abs_pos_embed`` in three ways, each visible in the numbers:

* it resamples with *scale factors* ``(h + 0.1) / G`` and ``(w + 0.1) / G``, not to a size;
* it uses plain bicubic (``a = -0.75``) without antialiasing;
* it keeps the stored table only when the patch count matches *and* the image is square in
  pixels (a 224 x 239 image has a 14 x 14 grid but is still resampled).

DINOv2's register models use ``offset=0`` (resample to a size) with antialiasing; both
behaviours are parameters here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def interpolate_pos_embed(
    pos_embed: torch.Tensor,
    *,
    image_hw: tuple[int, int],
    grid_hw: tuple[int, int],
    num_prefix: int,
    offset: float = 0.1,
    antialias: bool = False,
) -> torch.Tensor:
    """Resample a ViT position-embedding table to a new patch grid.

    Args:
        pos_embed: Stored table (1, num_prefix + G*G, D); the prefix rows (CLS) are kept as they are.
        image_hw: Image height and width in pixels (decides whether the table is used unchanged).
        grid_hw: Target patch grid (h, w) = (H // P, W // P).
        num_prefix: Number of leading rows that are not patch positions (1 for CLS, 0 if none).
        offset: The official ``+0.1``; with 0 the grid is resampled to an exact size.
        antialias: Antialiased bicubic (DINOv2 register models).

    Returns:
        (1, num_prefix + h*w, D) table, in the dtype of ``pos_embed``.

    Example:
        >>> table = torch.randn(1, 1 + 14 * 14, 8)
        >>> interpolate_pos_embed(table, image_hw=(240, 320), grid_hw=(15, 20), num_prefix=1).shape
        torch.Size([1, 301, 8])
    """
    h, w = grid_hw
    n_stored = pos_embed.shape[1] - num_prefix
    if n_stored == h * w and image_hw[0] == image_hw[1]:
        return pos_embed
    side = math.isqrt(n_stored)
    if side * side != n_stored:
        raise ValueError(f"stored position grid of {n_stored} entries is not square")
    prefix, patch = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    dim = pos_embed.shape[-1]
    grid = patch.reshape(1, side, side, dim).permute(0, 3, 1, 2).float()
    if offset:
        grid = F.interpolate(
            grid,
            scale_factor=((h + offset) / side, (w + offset) / side),
            mode="bicubic",
            align_corners=False,
            antialias=antialias,
        )
    else:
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False, antialias=antialias)
    if grid.shape[-2:] != (h, w):
        raise RuntimeError(f"position-embedding resampling gave {tuple(grid.shape[-2:])}, expected {(h, w)}")
    patch = grid.to(pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, h * w, dim)
    return torch.cat([prefix, patch], dim=1)
