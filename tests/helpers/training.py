"""Tiny generated image folders and configs for trainer tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

TINY_TRAIN_OVERRIDES = [
    'model.arch={"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2, "img_size": 32}',
    "model.drop_path_rate=0.0",
    "head.out_dim=64", "head.hidden_dim=32", "head.bottleneck_dim=16",
    "crops.global_size=32", "crops.local_size=16", "crops.local_crops_number=2",
    "optim.batch_size_per_gpu=4", "optim.warmup_epochs=1", "optim.lr=0.01",
    "data.num_workers=0", "run.epochs=2", "run.precision=fp32", "run.device=cpu", "run.log_every=100",
]


def make_image_folder(root: Path, n: int = 8, size: tuple[int, int] = (48, 40), classes: int = 2) -> Path:
    """``n`` random RGB / greyscale / RGBA images in class sub-folders under ``root``."""
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
        if i % 4 == 1:
            image = image.convert("L")
        elif i % 4 == 2:
            image = image.convert("RGBA")
        image.save(folder / f"img{i:03d}.png")
    return root


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    args = ["train", "--data", str(data), "--output-dir", str(out)]
    for item in [*TINY_TRAIN_OVERRIDES, *extra]:
        args += ["--set", item]
    return args


BAND_OVERRIDES = ["data.channels=5", "bands.rot90=true", "bands.intensity_p=1.0", "bands.noise_p=1.0",
                  "bands.blur_p=0.5", "bands.mean=[1,1,1,1,1]", "bands.std=[2,2,2,2,2]"]


def make_band_folder(root: Path, n: int = 8) -> Path:
    """``n`` 5-band arrays in mixed formats and layouts, plus one 4-band file that must be skipped."""
    import tifffile

    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        bands = rng.normal(1, 2, (5, 40, 40)).astype(np.float32)
        if i % 4 == 0:
            np.save(root / f"b{i}.npy", bands)
        elif i % 4 == 1:
            np.save(root / f"b{i}.npy", np.moveaxis(bands, 0, -1))
        elif i % 4 == 2:
            np.savez(root / f"b{i}.npz", image=(bands * 100).astype(np.int16))
        else:
            tifffile.imwrite(root / f"b{i}.tif", bands)
    np.save(root / "four_bands.npy", np.zeros((4, 40, 40), np.float32))
    return root
