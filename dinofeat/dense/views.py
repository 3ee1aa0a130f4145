"""Images prepared for dense work: resized whole (no crop) to a grid of whole patches, with the
geometry that maps a pixel of the original image to its patch.

The evaluation transform's centre crop would cut off parts of the picture a user clicks on or
wants coloured, so the dense tools resize the whole image instead: the shorter side to ``size``
pixels with the aspect ratio kept (or exactly ``(H, W)``), each side rounded to a multiple of the
patch size.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from dinofeat.config.preprocess import PreprocessConfig
from dinofeat.data.files import open_image
from dinofeat.data.preprocess import Size, pil_geometry, to_normalized_tensor

if TYPE_CHECKING:
    from dinofeat.features.extractor import FeatureExtractor

#: Shorter side, in pixels, that the dense tools resize images to by default.
DEFAULT_DENSE_SIZE = 224
#: Pixels per output cell of a CNN backbone (its last stage), which has no patch size.
CNN_OUTPUT_STRIDE = 32


def dense_size(width: int, height: int, size: Size, patch_size: int) -> tuple[int, int]:
    """Network input (H, W) for an image of ``width`` x ``height``: whole patches, at least one.

    Args:
        width: Original width in pixels.
        height: Original height in pixels.
        size: Shorter side S (aspect ratio kept) or an exact (H, W).
        patch_size: Each side is rounded to a multiple of it.

    Example:
        >>> dense_size(640, 480, 224, 16)
        (224, 304)
    """
    if isinstance(size, int):
        if size <= 0:
            raise ValueError(f"size must be positive, got {size}")
        scale = size / min(width, height)
        target = (height * scale, width * scale)
    else:
        if len(size) != 2 or min(size) <= 0:
            raise ValueError(f"size must be a positive S or (H, W), got {size}")
        target = (float(size[0]), float(size[1]))
    rounded = (max(1, int(side / patch_size + 0.5)) * patch_size for side in target)
    out_h, out_w = rounded
    return out_h, out_w


@dataclass(frozen=True)
class PatchView:
    """One image as the network sees it in the dense tools.

    Attributes:
        name: What error messages call it (the file name, or ``image #i``).
        original_size: (width, height) of the image as given.
        picture: uint8 (H, W, 3) network input pixels, H and W multiples of ``patch_size``.
        patch_size: Pixels per patch side.
    """

    name: str
    original_size: tuple[int, int]
    picture: np.ndarray
    patch_size: int

    @property
    def grid(self) -> tuple[int, int]:
        """(h, w) patches."""
        return self.picture.shape[0] // self.patch_size, self.picture.shape[1] // self.patch_size

    def to_picture(self, x: float, y: float) -> tuple[float, float]:
        """A pixel (x right, y down) of the original image -> the same spot in ``picture`` pixels.

        Raises:
            ValueError: the point lies outside the original image; the message names the image.
        """
        width, height = self.original_size
        if not (0 <= x < width and 0 <= y < height):
            raise ValueError(f"point ({x:g}, {y:g}) is outside {self.name}, which is {width}x{height} "
                             f"pixels (x in [0, {width}), y in [0, {height}))")
        # Pixel centres map to pixel centres: the resize scales the continuous extent.
        return ((x + 0.5) * self.picture.shape[1] / width - 0.5,
                (y + 0.5) * self.picture.shape[0] / height - 0.5)

    def patch_of(self, x: float, y: float) -> tuple[int, int]:
        """(row, col) of the patch that holds original pixel (x, y)."""
        px, py = self.to_picture(x, y)
        rows, cols = self.grid
        return min(rows - 1, max(0, int((py + 0.5) // self.patch_size))), \
            min(cols - 1, max(0, int((px + 0.5) // self.patch_size)))

    def tensor(self, config: PreprocessConfig) -> torch.Tensor:
        """The normalised (1, 3, H, W) batch of ``picture``."""
        return to_normalized_tensor(Image.fromarray(self.picture), config).unsqueeze(0)


def prepare_view(image: str | os.PathLike[str] | Image.Image, config: PreprocessConfig, patch_size: int,
                 size: Size = DEFAULT_DENSE_SIZE, name: str | None = None) -> PatchView:
    """Decode (a file) and resize an image for the dense tools with the model's interpolation.

    Args:
        image: An image file or a PIL image.
        config: The model's preprocessing (interpolation, normalisation).
        patch_size: The model's patch size.
        size: Shorter side S, or an exact (H, W); see :func:`dense_size`.
        name: What errors call the image (default: the file path, or ``image``).
    """
    if isinstance(image, Image.Image):
        pil, label = image.convert("RGB"), name or "image"
    else:
        pil, label = open_image(image), name or str(Path(image))
    height, width = dense_size(pil.width, pil.height, size, patch_size)
    picture = np.asarray(pil_geometry(config, (height, width))(pil))
    return PatchView(label, (pil.width, pil.height), picture, patch_size)


def token_stride(model: FeatureExtractor) -> int:
    """Pixels per patch-token side: the ViT's patch size, or a CNN's output stride."""
    return model.patch_size or CNN_OUTPUT_STRIDE


def view_features(model: FeatureExtractor, views: Sequence[PatchView],
                  outputs: Sequence[str] = ("patches",)) -> list[dict[str, torch.Tensor]]:
    """The requested outputs of each view (one forward pass per view, as their sizes differ).

    Returns:
        Per view, name -> tensor without the batch dimension, e.g. ``patches`` (h, w, D) and
        ``attention`` (heads, h, w).
    """
    results = []
    for view in views:
        out = model.features(view.tensor(model.preprocess), outputs=tuple(outputs), progress=False)
        first = {name: value[:, 0] if name == "layers" else value[0] for name, value in out.items()}
        if "patches" in first and tuple(first["patches"].shape[:2]) != view.grid:
            raise RuntimeError(f"{view.name}: the model gave a {tuple(first['patches'].shape[:2])} grid, "
                               f"not the expected {view.grid}")
        results.append(first)
    return results
