"""What the page shows, as PNG bytes: the picture, attention heads with their masks, the PCA of the
patch tokens and a point's similarity map.

All of it comes from one forward pass per image (:func:`analyse`) through the dense tools'
whole-image view (:mod:`dinofeat.dense.views`), so a click in the picture maps to its patch.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

from dinofeat.dense.pca import fit_pca
from dinofeat.dense.similarity import point_similarity
from dinofeat.dense.upsample import upsample_maps
from dinofeat.dense.views import DEFAULT_DENSE_SIZE, PatchView, prepare_view, token_stride, view_features
from dinofeat.features.extractor import FeatureExtractor
from dinofeat.features.masks import upsample_to_pixels
from dinofeat.viz.attention_figures import attention_grid
from dinofeat.viz.dense_figures import OVERLAY_ALPHA

#: Attention mass kept by the masks, as in the DINO paper's figures.
MASK_THRESHOLD = 0.6
ATTENTION_DPI = 80
SIMILARITY_COLOURMAP = "inferno"


@dataclass(frozen=True)
class Analysis:
    """One image seen by one model.

    Attributes:
        view: The whole-image network input and its pixel -> patch geometry.
        patches: (h, w, D) patch tokens.
        attention: (heads, h, w) last-block CLS attention, or None for a CNN.
        cls: (D,) CLS embedding.
    """

    view: PatchView
    patches: torch.Tensor
    attention: torch.Tensor | None
    cls: torch.Tensor


def analyse(model: FeatureExtractor, image: Image.Image, name: str, size: int = DEFAULT_DENSE_SIZE
            ) -> Analysis:
    """One forward pass: patch tokens, CLS and (for a ViT) attention of ``image`` resized whole."""
    view = prepare_view(image, model.preprocess, token_stride(model), size, name=name)
    outputs = ("cls", "patches", "attention") if model.has_attention else ("cls", "patches")
    out = view_features(model, [view], outputs)[0]
    attention = out["attention"].cpu() if "attention" in out else None
    return Analysis(view, out["patches"].cpu(), attention, out["cls"].cpu())


def png_bytes(picture: np.ndarray | Image.Image) -> bytes:
    image = picture if isinstance(picture, Image.Image) else Image.fromarray(picture)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def attention_png(analysis: Analysis) -> bytes | None:
    """The paper-style row: picture, one map per head, their mean, the 60 % masks; None for a CNN."""
    if analysis.attention is None:
        return None
    fig = attention_grid([(analysis.view.picture, analysis.attention)], analysis.view.patch_size,
                         MASK_THRESHOLD)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=ATTENTION_DPI)
    return buffer.getvalue()


def pca_png(analysis: Analysis) -> bytes:
    """The first three principal components of the image's patch tokens as RGB, at picture size."""
    rgb = fit_pca(analysis.patches, n_components=3).to_rgb(analysis.patches)  # (h, w, 3)
    blocks = upsample_to_pixels(rgb.permute(2, 0, 1), analysis.view.patch_size)
    return png_bytes(_to_uint8(blocks.permute(1, 2, 0).numpy()))


def similarity_png(analysis: Analysis, x: float, y: float) -> tuple[bytes, tuple[int, int]]:
    """Cosine similarity of the patch under original pixel (x, y) to every patch, over a grey picture.

    Returns:
        The PNG and the (row, col) of the query patch.

    Raises:
        ValueError: (x, y) lies outside the original image.
    """
    view = analysis.view
    cell = view.patch_of(x, y)
    scores = point_similarity(analysis.patches, [cell])[0][0]  # (h, w)
    height, width = view.picture.shape[:2]
    smooth = upsample_maps(scores, (height, width)).numpy()
    low = float(smooth.min())
    scaled = (smooth - low) / max(1.0 - low, 1e-6)
    from matplotlib import colormaps

    colours = colormaps[SIMILARITY_COLOURMAP](np.clip(scaled, 0.0, 1.0))[..., :3]
    grey = view.picture.mean(axis=2, keepdims=True) / 255.0
    blended = Image.fromarray(_to_uint8(OVERLAY_ALPHA * colours + (1 - OVERLAY_ALPHA) * grey))
    _mark(blended, view.to_picture(x, y))
    return png_bytes(blended), cell


def _mark(image: Image.Image, point: tuple[float, float], radius: int = 6) -> None:
    """A cyan cross at the clicked point."""
    draw = ImageDraw.Draw(image)
    px, py = point
    for dx, dy in ((radius, radius), (radius, -radius)):
        draw.line([(px - dx, py - dy), (px + dx, py + dy)], fill=(0, 255, 255), width=3)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    scaled: np.ndarray = (np.clip(values, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return scaled
