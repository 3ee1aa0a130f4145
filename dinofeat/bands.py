"""Multi-band images (photometric bands, satellite or microscopy channels): reading band files,
per-band normalisation and the evaluation geometry of a C-band model.

Band files are ``.npy`` arrays, ``.npz`` archives (their single array, or the one named
``image``) and multi-page or multi-channel TIFF (read with tifffile), laid out (C, H, W) or
(H, W, C), of any integer or float dtype. A model whose preprocessing carries a
:class:`BandNormalization` takes such files, or float arrays / tensors (N, C, H, W) of raw band
values, and applies clip -> stretch -> resize / centre-crop -> per-band standardisation.

Example:
    >>> norm = BandNormalization(channels=2, mean=(1.0, 2.0), std=(2.0, 4.0))
    >>> norm.apply(torch.tensor([[[[3.0]], [[6.0]]]])).flatten().tolist()
    [1.0, 1.0]
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from dinofeat.errors import ImageReadError

BAND_SUFFIXES = frozenset({".npy", ".npz", ".tif", ".tiff"})
Layout = Literal["auto", "chw", "hwc"]


class BandFileError(ImageReadError):
    """A band file is unreadable, or its band count or layout is not the one expected."""


@dataclass(frozen=True)
class BandNormalization:
    """Per-band preprocessing of a C-band model, applied in this order.

    Attributes:
        channels: C, the number of bands the model takes.
        mean: Per-band mean after clipping and stretching (what ``dinofeat-train stats`` measures).
        std: Per-band standard deviation, likewise.
        clip_low: Per-band lower clip values (e.g. a low percentile), or None.
        clip_high: Per-band upper clip values, or None.
        stretch: ``"arcsinh"`` maps x -> asinh(x / arcsinh_scale), the usual stretch of astronomical
            fluxes (bright cores and faint outskirts both kept); ``"none"`` leaves values linear.
        arcsinh_scale: Softening of the arcsinh stretch (about the noise level).
    """

    channels: int
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    clip_low: tuple[float, ...] | None = None
    clip_high: tuple[float, ...] | None = None
    stretch: Literal["none", "arcsinh"] = "none"
    arcsinh_scale: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.channels, int) or self.channels < 1:
            raise ValueError(f"BandNormalization.channels must be a positive integer, got {self.channels!r}")
        for name in ("mean", "std", "clip_low", "clip_high"):
            values = getattr(self, name)
            if values is not None and len(values) != self.channels:
                raise ValueError(
                    f"BandNormalization.{name} has {len(values)} values for {self.channels} bands")
        if self.std is not None and min(self.std) <= 0:
            raise ValueError(f"BandNormalization.std must be positive, got {self.std}")
        if self.stretch not in ("none", "arcsinh") or self.arcsinh_scale <= 0:
            raise ValueError(f"BandNormalization stretch must be 'none' or 'arcsinh' with arcsinh_scale > 0, "
                             f"got {self.stretch!r}, {self.arcsinh_scale}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BandNormalization:
        values = dict(data)
        for key in ("mean", "std", "clip_low", "clip_high"):
            if values.get(key) is not None:
                values[key] = tuple(float(v) for v in values[key])
        return cls(**values)

    def _per_band(self, values: tuple[float, ...], like: torch.Tensor) -> torch.Tensor:
        return torch.tensor(values, dtype=like.dtype, device=like.device).view(-1, 1, 1)

    def stretched(self, bands: torch.Tensor) -> torch.Tensor:
        """Clip and stretch (C, H, W) or (N, C, H, W) float bands (no standardisation)."""
        if self.clip_low is not None:
            bands = torch.maximum(bands, self._per_band(self.clip_low, bands))
        if self.clip_high is not None:
            bands = torch.minimum(bands, self._per_band(self.clip_high, bands))
        if self.stretch == "arcsinh":
            bands = torch.asinh(bands / self.arcsinh_scale)
        return bands

    def standardized(self, bands: torch.Tensor) -> torch.Tensor:
        """(x - mean) / std per band; the identity when no statistics are set."""
        if self.mean is not None:
            bands = bands - self._per_band(self.mean, bands)
        if self.std is not None:
            bands = bands / self._per_band(self.std, bands)
        return bands

    def apply(self, bands: torch.Tensor) -> torch.Tensor:
        """Clip, stretch and standardise."""
        return self.standardized(self.stretched(bands))


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
        import tifffile

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
    from dinofeat.inputs import list_image_files  # inputs imports this module

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


def band_items(images: Any, norm: BandNormalization) -> list[Any]:
    if isinstance(images, (str, os.PathLike)):
        path = Path(images)
        return list(list_band_files(path)) if path.is_dir() else [path]
    if isinstance(images, (torch.Tensor, np.ndarray)):
        return list(images) if images.ndim == 4 else [images]
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("no images given (empty list)")
        return [item for entry in images for item in band_items(entry, norm)]
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
    for index, item in enumerate(band_items(images, norm)):
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
