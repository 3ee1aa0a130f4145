"""Small builders shared by the evaluation tests: a tiny saved model and tiny image folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dinofeat.config.preprocess import PreprocessConfig
from dinofeat.hub.format import HubConfig, save_pretrained
from dinofeat.models import arch_from_dict, build_backbone

TINY_ARCH = {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 32}


def save_tiny_model(directory: Path, arch: dict | None = None, resize: int = 40, crop: int = 32,
                    name: str = "tiny-eval") -> Path:
    """A random tiny ViT saved in dinofeat's format with a small preprocessing (resize 40, crop 32)."""
    torch.manual_seed(0)
    config = arch_from_dict(dict(arch or TINY_ARCH))
    save_pretrained(build_backbone(config), directory,
                    HubConfig(config, PreprocessConfig(resize=resize, crop=crop), name=name))
    return directory


def make_image_folder(root: Path, classes: int = 3, per_class: int = 3, size: int = 40,
                      seed: int = 0) -> Path:
    """ROOT/class_i/img_j.png with random colour images, a different mean colour per class."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True)
        base = rng.integers(0, 256, size=3)
        for j in range(per_class):
            noise = rng.integers(-40, 40, size=(size, size, 3))
            pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"img_{j}.png")
    return root


@pytest.fixture
def one_thread():
    """Run a test on one torch thread: with tiny tensors, threads only add contention on a busy 2-core
    machine (measured 100x slower under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
