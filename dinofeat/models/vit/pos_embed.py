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


# ---------------------------------------------------------------- overlapping patches
def _bicubic_weights(coords: torch.Tensor, size: int, step: float, antialias: bool) -> torch.Tensor:
    """(len(coords), size) weights sampling a length-``size`` signal at ``coords``.

    ``coords`` are source indices in the centre convention (sample ``i`` sits at ``i``). The kernels
    are PyTorch's: plain bicubic with ``a = -0.75`` and clamped borders, or, with ``antialias``, the
    kernel with ``a = -0.5`` widened by the sampling ``step`` when it exceeds 1, truncated at the
    borders and renormalised.
    """
    coords = coords.double()
    if not antialias:
        floor = coords.floor()
        t = (coords - floor).unsqueeze(1)
        taps = floor.long().unsqueeze(1) + torch.arange(-1, 3)
        a = -0.75
        x = (t - torch.arange(-1, 3, dtype=torch.float64)).abs()
        near = ((a + 2) * x - (a + 3)) * x * x + 1
        far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
        weights = torch.where(x <= 1, near, torch.where(x < 2, far, torch.zeros_like(x)))
        matrix = torch.zeros(len(coords), size, dtype=torch.float64)
        return matrix.scatter_add_(1, taps.clamp(0, size - 1), weights)
    widen = max(step, 1.0)
    source = torch.arange(size, dtype=torch.float64)
    x = ((source.unsqueeze(0) - coords.unsqueeze(1)) / widen).abs()
    a = -0.5
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    weights = torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))
    return weights / weights.sum(dim=1, keepdim=True)


def strided_pos_embed(
    pos_embed: torch.Tensor,
    *,
    image_hw: tuple[int, int],
    patch_size: int,
    stride: int,
    num_prefix: int,
    offset: float = 0.1,
    antialias: bool = False,
) -> torch.Tensor:
    """The position table for overlapping patches, evaluated at the new patch centres.

    The ordinary resampling (:func:`interpolate_pos_embed`) defines a continuous position
    function of the pixel: a patch centred at pixel ``c`` (along one axis of an image covering
    ``L`` pixels, ``L / P`` patches) reads the stored ``G``-entry table, bicubically, at source index
    ``x(c) = c / P * G / (L / P + offset) - 0.5`` (``offset`` 0.1 for the official rule, 0 for
    resampling to a size). With stride ``s`` the patches start at ``j * s`` and are centred at
    ``c_j = j * s + P / 2``, ``j = 0 .. (L - P) / s``; each reads that same function at ``c_j``, with
    the same kernel (antialiasing widened by the new, finer, sampling step). This keeps every
    token's position where its pixels are: a plain resize of the table to the new grid of ``n``
    (what dino-vit-features does) reads token ``j`` at pixel ``(j + 0.5) L / n`` instead, pushed
    outwards towards the borders (up to a quarter patch at ``s = P / 2``). With ``s == P`` both
    coincide with the ordinary table.

    Args:
        pos_embed: Stored table (1, num_prefix + G*G, D).
        image_hw: Pixels (H, W) covered by the patches: ``(h - 1) * s + P`` per axis.
        patch_size: P.
        stride: s, with ``1 <= s <= P`` (checked by the caller).
        num_prefix: Leading rows that are not patch positions (kept as they are).
        offset: The official ``+0.1``; 0 resamples to a size.
        antialias: Antialiased kernel (DINOv2 register models).

    Returns:
        (1, num_prefix + h*w, D) table, in the dtype of ``pos_embed``.
    """
    n_stored = pos_embed.shape[1] - num_prefix
    side = math.isqrt(n_stored)
    if side * side != n_stored:
        raise ValueError(f"stored position grid of {n_stored} entries is not square")
    matrices = []
    for length in image_hw:
        count = (length - patch_size) // stride + 1
        scale = side / (length / patch_size + offset)  # table entries per patch
        centres = (torch.arange(count, dtype=torch.float64) * stride + patch_size / 2) / patch_size
        matrices.append(_bicubic_weights(centres * scale - 0.5, side, scale * stride / patch_size, antialias))
    rows, cols = matrices
    dim = pos_embed.shape[-1]
    table = pos_embed[0, num_prefix:].reshape(side, side, dim).double()
    grid = torch.einsum("hi,wj,ijd->hwd", rows, cols, table)
    patch = grid.reshape(1, -1, dim).to(pos_embed.dtype)
    return torch.cat([pos_embed[:, :num_prefix], patch], dim=1)
