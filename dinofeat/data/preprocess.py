"""Image preprocessing: the official DINO evaluation transform and sized variants.

The default reproduces ``Resize(256, bicubic) -> CenterCrop(224) -> ToTensor -> Normalize``
of the official k-NN / linear evaluation scripts bit for bit on 8-bit PIL images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image
from torchvision.transforms import v2 as T
from torchvision.transforms.functional import InterpolationMode

from dinofeat.config.preprocess import PreprocessConfig

Size = int | tuple[int, int]

_INTERPOLATION = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR}


def pil_geometry(config: PreprocessConfig, size: Size | None = None) -> Callable[[Image.Image], Image.Image]:
    """The resize and crop steps on an 8-bit PIL image.

    Args:
        config: The model's preprocessing.
        size: None for the model's own (resize the shorter side to ``config.resize``, centre-crop
            ``config.crop``); an int ``S`` to keep the same resize-to-crop ratio at crop ``S``;
            an ``(H, W)`` pair to resize to exactly that size, aspect ratio not kept (as the
            official attention visualisation does), with no crop.
    """
    interpolation = _INTERPOLATION[config.interpolation]
    steps: Sequence[Callable[[Image.Image], Image.Image]]
    if size is None:
        steps = [T.Resize(config.resize, interpolation=interpolation), T.CenterCrop(config.crop)]
    elif isinstance(size, int):
        if size <= 0:
            raise ValueError(f"size must be positive, got {size}")
        resize = int(size * config.resize / config.crop)
        steps = [T.Resize(resize, interpolation=interpolation), T.CenterCrop(size)]
    else:
        height, width = size
        if height <= 0 or width <= 0:
            raise ValueError(f"size must be positive, got {size}")
        steps = [T.Resize((height, width), interpolation=interpolation)]
    compose: Callable[[Image.Image], Image.Image] = T.Compose(list(steps))
    return compose


def to_normalized_tensor(image: Image.Image | torch.Tensor, config: PreprocessConfig) -> torch.Tensor:
    """uint8 HWC PIL image or (3, H, W) uint8 tensor -> float32 (3, H, W), scaled to [0, 1] and normalised."""
    tensor = T.functional.pil_to_tensor(image) if isinstance(image, Image.Image) else image
    pixels = tensor.float().div(255.0)
    mean = torch.tensor(config.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(config.std, dtype=torch.float32).view(3, 1, 1)
    return (pixels - mean) / std


def preprocess_pil(image: Image.Image, config: PreprocessConfig, size: Size | None = None) -> torch.Tensor:
    """Full evaluation transform of one PIL image (converted to RGB first) -> (3, H, W) float32."""
    rgb = image.convert("RGB")
    return to_normalized_tensor(pil_geometry(config, size)(rgb), config)
