"""A synthetic segmentation task for the probe tests: shapes whose class is their colour."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {1: (220, 40, 40), 2: (40, 200, 40), 3: (40, 40, 220)}


def make_shapes_split(
    root: Path, count: int, size: int = 64, seed: int = 0, layout: str = "ade", cell: int = 8
) -> Path:
    """``root/images/*.png`` + ``root/annotations/*.png`` (or VOC's folder names): grey noise with two
    rectangles, each of a class colour, on a grid of ``cell`` pixels (the patch size, so that the
    probe's patch-level predictions can draw the edges); masks are palette PNGs of the class indices."""
    rng = np.random.default_rng(seed)
    image_dir, mask_dir = (
        ("images", "annotations") if layout == "ade" else ("JPEGImages", "SegmentationClass")
    )
    (root / image_dir).mkdir(parents=True)
    (root / mask_dir).mkdir(parents=True)
    for number in range(count):
        pixels = rng.integers(90, 160, size=(size, size, 3)).astype(np.uint8)
        labels = np.zeros((size, size), dtype=np.uint8)
        for label in rng.choice(list(COLOURS), size=2, replace=False):
            cells = size // cell
            h, w = rng.integers(cells // 4, cells // 2 + 1, size=2) * cell
            top, left = (
                rng.integers(0, cells - h // cell + 1) * cell,
                rng.integers(0, cells - w // cell + 1) * cell,
            )
            pixels[top : top + h, left : left + w] = COLOURS[int(label)]
            labels[top : top + h, left : left + w] = label
        Image.fromarray(pixels).save(root / image_dir / f"img_{number:03d}.png")
        mask = Image.fromarray(labels, mode="P")
        mask.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0])
        mask.save(root / mask_dir / f"img_{number:03d}.png")
    return root
