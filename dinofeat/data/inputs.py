"""Turning what users pass (paths, folders, PIL, numpy, tensors, lists) into model batches."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import torch
from PIL import Image

from dinofeat.config.preprocess import PreprocessConfig
from dinofeat.data.bands import band_items, iter_band_batches
from dinofeat.data.files import list_image_files, open_image
from dinofeat.data.preprocess import Size, pil_geometry, to_normalized_tensor

ImageLike: TypeAlias = "str | os.PathLike[str] | Image.Image | np.ndarray | torch.Tensor"
Images: TypeAlias = "ImageLike | Sequence[ImageLike]"


def _expand(images: Any) -> list[Any]:
    """Flatten lists and folders into a list of single items (not yet decoded)."""
    if isinstance(images, (str, os.PathLike)):
        path = Path(images)
        return list(list_image_files(path)) if path.is_dir() else [path]
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        return list(images)
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return list(images)
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("no images given (empty list)")
        items: list[Any] = []
        for item in images:
            items.extend(_expand(item))
        return items
    return [images]


def image_items(images: Any, config: PreprocessConfig | None = None) -> list[Any]:
    """The single images that ``images`` stands for, in order (folders listed, lists flattened), not
    decoded: what each output row of a call corresponds to. A C-band model's (``config.bands`` set) are
    band files and arrays."""
    if config is not None and config.bands is not None:
        return band_items(images)
    return _expand(images)


def _check_uint8_chw(tensor: torch.Tensor, what: str) -> torch.Tensor:
    if tensor.ndim != 3 or tensor.shape[0] != 3:
        raise ValueError(f"{what} must have shape (3, H, W) or (N, 3, H, W), got {tuple(tensor.shape)}")
    return tensor


def _to_pil(item: Any, index: int) -> Image.Image:
    if isinstance(item, Image.Image):
        return item.convert("RGB")
    if isinstance(item, (str, os.PathLike)):
        return open_image(item)
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8:
            raise TypeError(f"numpy image #{index} must be uint8 HWC, got dtype {item.dtype}")
        if item.ndim == 2:
            item = np.repeat(item[:, :, None], 3, axis=2)
        if item.ndim != 3 or item.shape[2] not in (1, 3, 4):
            raise ValueError(f"numpy image #{index} must have shape (H, W, 3), got {item.shape}")
        if item.shape[2] == 1:
            item = np.repeat(item, 3, axis=2)
        return Image.fromarray(np.ascontiguousarray(item[:, :, :3]))
    if isinstance(item, torch.Tensor):
        if item.dtype != torch.uint8:
            raise TypeError(
                f"tensor image #{index} has dtype {item.dtype}: pass raw pixels as uint8 (3, H, W), "
                "or a float batch (N, 3, H, W) that is already preprocessed"
            )
        chw = _check_uint8_chw(item, f"tensor image #{index}")
        return Image.fromarray(chw.permute(1, 2, 0).contiguous().cpu().numpy())
    raise TypeError(f"unsupported image type for item #{index}: {type(item).__name__}")


def count_images(images: Any, config: PreprocessConfig | None = None) -> int:
    if isinstance(images, torch.Tensor) and images.is_floating_point():
        return 1 if images.ndim == 3 else int(images.shape[0])  # one preprocessed (3, H, W) image
    return len(image_items(images, config))


def iter_batches(
    images: Any, config: PreprocessConfig, size: Size | None, batch_size: int
) -> Iterator[torch.Tensor]:
    """Yield normalised float batches (B, 3, H, W) for any accepted input (``batch_size`` >= 1, checked
    by the caller).

    A floating-point tensor (N, 3, H, W) is taken as already preprocessed and only split into
    batches. Everything else is decoded to RGB and goes through the model's preprocessing; all
    images of one call must come out at the same size (they do with the default crop). A C-band
    model (``config.bands`` set) takes band files and raw float arrays / tensors instead
    (:func:`dinofeat.data.bands.iter_band_batches`).
    """
    if config.bands is not None:
        yield from iter_band_batches(images, config.bands, config.resize, config.crop, size, batch_size)
        return
    if isinstance(images, torch.Tensor) and images.is_floating_point():
        if size is not None:
            raise ValueError("size= resizes images that dinofeat preprocesses; a float tensor is taken as "
                             "already preprocessed and used at its own size")
        preprocessed = images.unsqueeze(0) if images.ndim == 3 else images
        if preprocessed.ndim != 4 or preprocessed.shape[1] != 3:
            raise ValueError(f"a float tensor must be a preprocessed batch (N, 3, H, W) or one image "
                             f"(3, H, W), got {tuple(images.shape)}")
        yield from torch.split(preprocessed, batch_size)
        return
    if isinstance(images, torch.Tensor) and images.dtype == torch.uint8 and images.ndim not in (3, 4):
        raise ValueError(
            f"a uint8 tensor must have shape (3, H, W) or (N, 3, H, W), got {tuple(images.shape)}")
    geometry = pil_geometry(config, size)
    items = _expand(images)
    batch: list[torch.Tensor] = []
    for index, item in enumerate(items):
        tensor = to_normalized_tensor(geometry(_to_pil(item, index)), config)
        if batch and tensor.shape != batch[0].shape:
            raise ValueError(
                f"image #{index} preprocesses to {tuple(tensor.shape[1:])} but earlier ones to "
                f"{tuple(batch[0].shape[1:])}; pass size=(H, W) or use the default centre crop"
            )
        batch.append(tensor)
        if len(batch) == batch_size:
            yield torch.stack(batch)
            batch = []
    if batch:
        yield torch.stack(batch)
