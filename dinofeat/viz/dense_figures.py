"""Figures of the dense tools: PCA pictures, similarity maps, correspondences, segments.

Each function takes network-input pictures (uint8 (H, W, 3), from
:class:`~dinofeat.dense.views.PatchView`) and the tokens-derived maps, and returns a matplotlib
``Figure`` to be written with :func:`dinofeat.viz.attention_figures.save_figure`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from dinofeat.dense.upsample import upsample_maps

PANEL_INCHES = 2.6
#: Opacity of a map drawn over its picture.
OVERLAY_ALPHA = 0.6


def _panels(rows: int, cols: int, aspect: float, inches: float = PANEL_INCHES) -> tuple[Any, np.ndarray]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(inches * cols * aspect, inches * rows + 0.3), layout="constrained")
    axes = np.asarray(fig.subplots(rows, cols, squeeze=False))
    for axis in axes.flat:
        axis.set_axis_off()
    return fig, axes


def _extent(picture: np.ndarray) -> tuple[float, float, float, float]:
    """imshow extent that stretches a patch-level map over the picture's pixels."""
    return (-0.5, picture.shape[1] - 0.5, picture.shape[0] - 0.5, -0.5)


def _check_pairs(pictures: Sequence[np.ndarray], maps: Sequence[Any], what: str) -> None:
    if not pictures:
        raise ValueError(f"the {what} figure needs at least one image")
    if len(pictures) != len(maps):
        raise ValueError(f"{len(pictures)} pictures but {len(maps)} {what} maps")


def _mean_aspect(pictures: Sequence[np.ndarray]) -> float:
    return float(np.mean([p.shape[1] / p.shape[0] for p in pictures]))


def pca_figure(pictures: Sequence[np.ndarray], rgb: Sequence[torch.Tensor],
               titles: Sequence[str] | None = None) -> Any:
    """Each picture beside its PCA colouring, one row per image.

    Args:
        pictures: uint8 (H, W, 3) network inputs.
        rgb: (h, w, 3) colours in [0, 1] per picture (``PCAProjection.to_rgb``).
        titles: Optional row titles (e.g. file names).
    """
    _check_pairs(pictures, rgb, "PCA")
    fig, axes = _panels(len(pictures), 2, _mean_aspect(pictures))
    for index, (picture, colours) in enumerate(zip(pictures, rgb, strict=True)):
        axes[index, 0].imshow(picture)
        axes[index, 0].set_title(titles[index] if titles else "image", fontsize=8)
        axes[index, 1].imshow(colours.cpu().numpy(), extent=_extent(picture), interpolation="nearest")
        axes[index, 1].set_title("PCA 1-3 as RGB", fontsize=8)
    return fig


def similarity_figure(pictures: Sequence[np.ndarray], maps: Sequence[torch.Tensor],
                      points: Sequence[tuple[float, float]], titles: Sequence[str] | None = None,
                      point_labels: Sequence[str] | None = None) -> Any:
    """One row per query point: the query picture with the point, then the map over each picture.

    Args:
        pictures: The query picture first, then the targets.
        maps: (Q, h_i, w_i) cosine similarities per picture (``point_similarity``).
        points: Q query points (x, y) in the query picture's pixels.
        titles: Optional column titles, one per picture.
        point_labels: Optional names of the points (e.g. their original-image coordinates).

    Maps are drawn over a grey copy of each picture; colours share one scale per row, from the
    row's lowest similarity to 1 (the query patch).
    """
    _check_pairs(pictures, maps, "similarity")
    if any(m.shape[0] != len(points) for m in maps):
        rows = [m.shape[0] for m in maps]
        raise ValueError(f"every map needs one row per point ({len(points)}), got {rows}")
    fig, axes = _panels(len(points), len(pictures) + 1, _mean_aspect(pictures))
    upsampled = [upsample_maps(m.cpu(), (p.shape[0], p.shape[1])).numpy()
                 for p, m in zip(pictures, maps, strict=True)]
    for row, (x, y) in enumerate(points):
        axes[row, 0].imshow(pictures[0])
        axes[row, 0].scatter([x], [y], s=60, c="red", marker="x", linewidths=2)
        label = point_labels[row] if point_labels else f"({x:.0f}, {y:.0f})"
        axes[row, 0].set_title(f"query {label}", fontsize=8)
        low = min(float(u[row].min()) for u in upsampled)
        for col, (picture, values) in enumerate(zip(pictures, upsampled, strict=True), start=1):
            axes[row, col].imshow(picture.mean(axis=2), cmap="gray", vmin=0, vmax=255)
            axes[row, col].imshow(values[row], cmap="inferno", vmin=low, vmax=1.0, alpha=OVERLAY_ALPHA)
            axes[row, col].set_title(titles[col - 1] if titles else f"image {col - 1}", fontsize=8)
    return fig


def match_figure(picture_a: np.ndarray, picture_b: np.ndarray, points_a: np.ndarray, points_b: np.ndarray,
                 similarity: np.ndarray, title: str = "") -> Any:
    """Two pictures side by side with a line per correspondence, coloured by similarity.

    Args:
        picture_a: uint8 (H_a, W_a, 3).
        picture_b: uint8 (H_b, W_b, 3).
        points_a: (M, 2) points (x, y) in ``picture_a``'s pixels.
        points_b: (M, 2) their matches in ``picture_b``.
        similarity: (M,) cosine similarity of each pair.
        title: Figure title.
    """
    if not (len(points_a) == len(points_b) == len(similarity)):
        raise ValueError(f"{len(points_a)} points, {len(points_b)} matches and {len(similarity)} "
                         "similarities: they must be as many")
    height = max(picture_a.shape[0], picture_b.shape[0])
    canvas = np.zeros((height, picture_a.shape[1] + picture_b.shape[1], 3), np.uint8)
    canvas[: picture_a.shape[0], : picture_a.shape[1]] = picture_a
    canvas[: picture_b.shape[0], picture_a.shape[1]:] = picture_b
    fig, axes = _panels(1, 1, canvas.shape[1] / canvas.shape[0], inches=2 * PANEL_INCHES)
    axis = axes[0, 0]
    axis.imshow(canvas)
    from matplotlib import colormaps

    colours = colormaps["viridis"](np.linspace(1.0, 0.0, max(len(similarity), 1)))  # strongest: yellow
    for (xa, ya), (xb, yb), colour in zip(points_a, points_b, colours, strict=False):
        xb = xb + picture_a.shape[1]
        axis.plot([xa, xb], [ya, yb], color=colour, linewidth=1)
        axis.scatter([xa, xb], [ya, yb], color=[colour], s=8)
    axis.set_title(title or f"{len(similarity)} best buddies, strongest in yellow", fontsize=8)
    return fig


def _cluster_colours(k: int) -> Any:
    """k distinct colours: the qualitative tab10 / tab20 palettes, or evenly spaced turbo beyond 20."""
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap

    if k <= 20:
        base = colormaps["tab10" if k <= 10 else "tab20"]
        return ListedColormap([base(i) for i in range(k)])
    return ListedColormap(colormaps["turbo"](np.linspace(0.0, 1.0, k)))


def segment_figure(pictures: Sequence[np.ndarray], labels: Sequence[torch.Tensor], k: int,
                   titles: Sequence[str] | None = None) -> Any:
    """Each picture beside its clusters drawn over it; one colour per cluster id in every image.

    Args:
        pictures: uint8 (H, W, 3) network inputs.
        labels: (h, w) int cluster ids per picture (``cluster_patches``).
        k: Number of clusters (fixes the colours).
        titles: Optional row titles.
    """
    _check_pairs(pictures, labels, "segment")
    palette = _cluster_colours(k)
    fig, axes = _panels(len(pictures), 2, _mean_aspect(pictures))
    for index, (picture, ids) in enumerate(zip(pictures, labels, strict=True)):
        axes[index, 0].imshow(picture)
        axes[index, 0].set_title(titles[index] if titles else "image", fontsize=8)
        axes[index, 1].imshow(picture)
        axes[index, 1].imshow(ids.cpu().numpy(), cmap=palette, vmin=-0.5, vmax=k - 0.5, alpha=OVERLAY_ALPHA,
                              extent=_extent(picture), interpolation="nearest")
        axes[index, 1].set_title(f"{k} parts", fontsize=8)
    return fig
