"""The paper-style attention figure: image, per-head heatmaps, their mean, mask contours over the image;
one row per image."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dinofeat.features.masks import attention_masks, upsample_to_pixels
from dinofeat.utils.atomic_write import replace_atomically


def attention_figure(image: np.ndarray, attn: torch.Tensor, patch_size: int, threshold: float = 0.6) -> Any:
    """A matplotlib Figure: the image, one heatmap per head, their mean, and the thresholded masks.

    Args:
        image: The network's input picture, uint8 (H, W, 3), H and W multiples of ``patch_size``
            (or larger; the maps cover the top-left h*P x w*P pixels).
        attn: CLS attention (heads, h, w) from
            :meth:`~dinofeat.features.extractor.FeatureExtractor.cls_attention`.
        patch_size: Pixels per patch, for nearest upsampling of the maps.
        threshold: Attention mass kept by the masks (0.6 in the paper).

    Returns:
        The ``matplotlib.figure.Figure`` (not yet saved).

    Example:
        >>> fig = attention_figure(np.zeros((32, 32, 3), np.uint8), torch.rand(2, 4, 4), 8)
        >>> len(fig.axes)
        5
    """
    return attention_grid([(image, attn)], patch_size, threshold)


def attention_grid(
    rows: Sequence[tuple[np.ndarray, torch.Tensor]], patch_size: int, threshold: float = 0.6
) -> Any:
    """:func:`attention_figure` for several images of one model: one row of panels per image.

    Args:
        rows: ``(image, attn)`` pairs as :func:`attention_figure` takes them, all with the same
            number of heads.
        patch_size: Pixels per patch.
        threshold: Attention mass kept by the masks.

    Example:
        >>> pairs = [(np.zeros((32, 32, 3), np.uint8), torch.rand(2, 4, 4))] * 3
        >>> len(attention_grid(pairs, 8).axes)
        15
    """
    from matplotlib.figure import Figure

    if not rows:
        raise ValueError("attention_grid needs at least one (image, attention) pair")
    for _, attn in rows:
        if attn.ndim != 3:
            raise ValueError(f"attention must be (heads, h, w), got {tuple(attn.shape)}")
    heads = rows[0][1].shape[0]
    if any(attn.shape[0] != heads for _, attn in rows):
        raise ValueError(f"every row needs the same number of heads, got {[a.shape[0] for _, a in rows]}")
    panels = heads + 3
    fig = Figure(figsize=(2.2 * panels, 2.4 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), panels, squeeze=False)
    for row_axes, (image, attn) in zip(axes, rows, strict=True):
        _draw_row(row_axes, image, attn, patch_size, threshold)
    return fig


def _draw_row(axes: Any, image: np.ndarray, attn: torch.Tensor, patch_size: int, threshold: float) -> None:
    heads, h, w = attn.shape
    maps = upsample_to_pixels(attn.float().cpu(), patch_size).numpy()
    masks = upsample_to_pixels(attention_masks(attn.float().cpu(), threshold), patch_size).numpy()
    picture = image[: h * patch_size, : w * patch_size]
    axes[0].imshow(picture)
    axes[0].set_title("image")
    for head in range(heads):
        axes[1 + head].imshow(maps[head], cmap="viridis")
        axes[1 + head].set_title(f"head {head}")
    axes[heads + 1].imshow(maps.mean(axis=0), cmap="viridis")
    axes[heads + 1].set_title("mean")
    axes[heads + 2].imshow(picture)
    colours = [f"C{head % 10}" for head in range(heads)]
    for head in range(heads):
        if 0 < masks[head].sum() < masks[head].size:
            axes[heads + 2].contour(masks[head].astype(float), levels=[0.5], colors=[colours[head]],
                                    linewidths=1)
    axes[heads + 2].set_title(f"{threshold:.0%} masks")
    for axis in axes:
        axis.set_axis_off()


def save_figure(fig: Any, path: str | os.PathLike[str], dpi: int = 100) -> Path:
    """Save a Figure atomically (temporary file, then rename); the format follows the suffix."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    replace_atomically(lambda tmp: fig.savefig(tmp, dpi=dpi), out)
    return out
