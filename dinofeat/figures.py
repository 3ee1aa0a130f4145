"""The paper-style attention figure: image, per-head heatmaps, their mean, mask contours over the image."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dinofeat.atomic_write import replace_atomically
from dinofeat.masks import attention_masks, upsample_to_pixels


def attention_figure(image: np.ndarray, attn: torch.Tensor, patch_size: int, threshold: float = 0.6) -> Any:
    """A matplotlib Figure: the image, one heatmap per head, their mean, and the thresholded masks.

    Args:
        image: The network's input picture, uint8 (H, W, 3), H and W multiples of ``patch_size``
            (or larger; the maps cover the top-left h*P x w*P pixels).
        attn: CLS attention (heads, h, w) from :meth:`~dinofeat.extractor.FeatureExtractor.cls_attention`.
        patch_size: Pixels per patch, for nearest upsampling of the maps.
        threshold: Attention mass kept by the masks (0.6 in the paper).

    Returns:
        The ``matplotlib.figure.Figure`` (not yet saved).

    Example:
        >>> fig = attention_figure(np.zeros((32, 32, 3), np.uint8), torch.rand(2, 4, 4), 8)
        >>> len(fig.axes)
        5
    """
    from matplotlib.figure import Figure

    if attn.ndim != 3:
        raise ValueError(f"attention must be (heads, h, w), got {tuple(attn.shape)}")
    heads, h, w = attn.shape
    maps = upsample_to_pixels(attn.float().cpu(), patch_size).numpy()
    masks = upsample_to_pixels(attention_masks(attn.float().cpu(), threshold), patch_size).numpy()
    picture = image[: h * patch_size, : w * patch_size]
    panels = heads + 3
    fig = Figure(figsize=(2.2 * panels, 2.4), layout="constrained")
    axes = fig.subplots(1, panels)
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
    return fig


def save_figure(fig: Any, path: str | os.PathLike[str], dpi: int = 100) -> Path:
    """Save a Figure atomically (temporary file, then rename); the format follows the suffix."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    replace_atomically(lambda tmp: fig.savefig(tmp, dpi=dpi), out)
    return out
