"""Multi-band images (photometric bands, satellite or microscopy channels): reading band files and the
evaluation geometry of a C-band model.

Band files are ``.npy`` arrays, ``.npz`` archives (their single array, or the one named
``image``) and multi-page or multi-channel TIFF (read with tifffile), laid out (C, H, W) or
(H, W, C), of any integer or float dtype. A model whose preprocessing carries a
:class:`~dinofeat.config.preprocess.BandNormalization` takes such files, or float arrays / tensors
(N, C, H, W) of raw band values, and applies clip -> stretch -> resize / centre-crop -> per-band
standardisation.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from dinofeat.config.preprocess import BandNormalization
from dinofeat.data.files import list_image_files
from dinofeat.utils.errors import ImageReadError
from dinofeat.utils.extras import require

BAND_SUFFIXES = frozenset({".npy", ".npz", ".tif", ".tiff"})
Layout = Literal["auto", "chw", "hwc"]


class BandFileError(ImageReadError):
    """A band file is unreadable, or its band count or layout is not the one expected."""


def to_chw(array: np.ndarray, channels: int, layout: Layout, what: str) -> np.ndarray:
    """A (C, H, W) float32 view of a 2-D or 3-D band array.

    ``"auto"`` takes (C, H, W) when the first axis has C entries, else (H, W, C) when the last
    does; a 2-D array is one band.

    Raises:
        BandFileError: the array is not 2-D/3-D, or its band count or layout is not the expected one.
    """
    if array.ndim == 2:
        array = array[None]
        layout = "chw"
    if array.ndim != 3:
        raise BandFileError(f"{what} has shape {array.shape}; expected (C, H, W) or (H, W, C) bands")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise BandFileError(f"{what} has dtype {array.dtype}; expected integer or float bands")
    first, last = array.shape[0] == channels, array.shape[-1] == channels
    if first and layout in ("chw", "auto"):
        chw = array
    elif layout in ("hwc", "auto") and last:
        chw = np.moveaxis(array, -1, 0)
    else:
        expected = {"chw": "(C, H, W)", "hwc": "(H, W, C)", "auto": "(C, H, W) or (H, W, C)"}[layout]
        raise BandFileError(f"{what} has shape {array.shape}; expected {expected} with C = {channels} bands")
    return np.ascontiguousarray(chw, dtype=np.float32)


def _read_array(path: Path) -> np.ndarray:
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return np.asarray(np.load(path, allow_pickle=False))
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            names = list(archive.files)
            if len(names) == 1:
                return np.asarray(archive[names[0]])
            if "image" in names:
                return np.asarray(archive["image"])
            raise BandFileError(f"{path} holds arrays {names}; store one array, or name it 'image'")
    if suffix in (".tif", ".tiff"):
        tifffile = require("tifffile", "bands", "reading TIFF band files")
        return np.asarray(tifffile.imread(path))
    raise BandFileError(f"{path} is not a band file ({', '.join(sorted(BAND_SUFFIXES))})")


def read_bands(path: str | os.PathLike[str], channels: int, layout: Layout = "auto") -> np.ndarray:
    """Read a band file as float32 (C, H, W).

    Raises:
        BandFileError: missing, unreadable, or with another band count / layout (the message names the file).
    """
    file = Path(path)
    try:
        array = _read_array(file)
    except BandFileError:
        raise
    except FileNotFoundError:
        raise BandFileError(f"band file not found: {file}") from None
    except (OSError, ValueError, KeyError, EOFError) as error:
        raise BandFileError(f"cannot read band file {file}: {error}") from None
    return to_chw(array, channels, layout, str(file))


def list_band_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Band files below ``folder`` (recursively), sorted.

    Raises:
        FileNotFoundError: ``folder`` is not a folder, or holds no band file.
    """

    return list_image_files(folder, suffixes=BAND_SUFFIXES, what="band")


def resize_and_crop(bands: torch.Tensor, resize: int, crop: int) -> torch.Tensor:
    """Bicubic resize of the shorter side to ``resize`` then a centre crop ``crop`` of (C, H, W) bands."""
    _, height, width = bands.shape
    scale = resize / min(height, width)
    size = (max(crop, round(height * scale)), max(crop, round(width * scale)))
    if size != (height, width):
        bands = F.interpolate(bands[None], size=size, mode="bicubic", align_corners=False,
                              antialias=scale < 1)[0]
    top, left = (bands.shape[1] - crop) // 2, (bands.shape[2] - crop) // 2
    return bands[:, top:top + crop, left:left + crop]


def band_items(images: Any) -> list[Any]:
    """The single band inputs that ``images`` stands for, in order (folders listed, lists flattened)."""
    if isinstance(images, (str, os.PathLike)):
        path = Path(images)
        return list(list_band_files(path)) if path.is_dir() else [path]
    if isinstance(images, (torch.Tensor, np.ndarray)):
        return list(images) if images.ndim == 4 else [images]
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("no images given (empty list)")
        return [item for entry in images for item in band_items(entry)]
    return [images]


def _band_tensor(item: Any, index: int, norm: BandNormalization) -> torch.Tensor:
    what = f"input #{index}"
    if isinstance(item, (str, os.PathLike)):
        path = Path(item)
        if path.suffix.lower() not in BAND_SUFFIXES:
            raise TypeError(f"{path} is an image file; this model takes {norm.channels}-band arrays "
                            f"({', '.join(sorted(BAND_SUFFIXES))}), not RGB images")
        return torch.from_numpy(read_bands(path, norm.channels, "auto"))
    if isinstance(item, np.ndarray):
        return torch.from_numpy(to_chw(item, norm.channels, "chw", f"array {what}"))
    if isinstance(item, torch.Tensor):
        if item.ndim != 3 or item.shape[0] != norm.channels:
            raise ValueError(f"tensor {what} has shape {tuple(item.shape)}; this model takes "
                             f"({norm.channels}, H, W) bands or (N, {norm.channels}, H, W) batches")
        return item.detach().float().cpu()
    raise TypeError(f"{what} is a {type(item).__name__}; this model takes {norm.channels}-band arrays, "
                    "tensors or band files, not RGB images")


def iter_band_batches(images: Any, norm: BandNormalization, resize: int, crop: int,
                      size: int | Sequence[int] | None, batch_size: int) -> Iterator[torch.Tensor]:
    """Normalised (B, C, h, w) batches from band files, folders, arrays or tensors of raw band values.

    ``size``: None for the model's own resize / centre crop; an int S for the same ratio at crop S;
    (H, W) to resize to exactly that size.
    """
    batch: list[torch.Tensor] = []
    for index, item in enumerate(band_items(images)):
        bands = norm.stretched(_band_tensor(item, index, norm))
        if size is None:
            bands = resize_and_crop(bands, resize, crop)
        elif isinstance(size, int):
            bands = resize_and_crop(bands, int(size * resize / crop), size)
        else:
            bands = F.interpolate(bands[None], size=tuple(size), mode="bicubic", align_corners=False)[0]
        bands = norm.standardized(bands)
        if batch and bands.shape != batch[0].shape:
            raise ValueError(f"input #{index} preprocesses to {tuple(bands.shape[1:])} but earlier ones to "
                             f"{tuple(batch[0].shape[1:])}; pass size=(H, W)")
        batch.append(bands)
        if len(batch) == batch_size:
            yield torch.stack(batch)
            batch = []
    if batch:
        yield torch.stack(batch)
