"""Training on multi-band arrays: the dataset of band files and the per-band statistics behind
``dinofeat-train stats``.

A band file whose band count or layout differs from ``data.channels`` / ``data.channel_layout``
(or that cannot be read) follows the corrupt-image policy of :mod:`dinofeat.training.data.images`:
skipped and counted, never fatal unless no file is readable.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dinofeat.config.preprocess import BandNormalization
from dinofeat.data.bands import BandFileError, Layout, list_band_files, read_bands
from dinofeat.data.files import read_file_list
from dinofeat.training.config.train_config import TrainConfig, band_normalization
from dinofeat.training.data.band_augment import BandMultiCrop
from dinofeat.training.data.images import ImageDataset
from dinofeat.utils.atomic_write import write_text_atomically

_log = logging.getLogger(__name__)


class BandDataset(ImageDataset):
    """Band files (C, H, W) + a crop transform, seeded per (seed, epoch, index) like :class:`ImageDataset`.

    Args:
        paths: Band files.
        transform: (C, H, W) float tensor -> list of crops (e.g. :class:`BandMultiCrop`).
        channels: Bands every file must have.
        layout: ``"auto"``, ``"chw"`` or ``"hwc"``.
        seed: Run seed.
        cache: Read every file once now and keep it in memory (files that do not fit are skipped
            and counted in ``skipped``); otherwise files are read when used.
    """

    def __init__(self, paths: list[Path], transform: Any, channels: int, layout: Layout = "auto",
                 seed: int = 0, cache: bool = False) -> None:
        self.channels, self.layout = channels, layout
        super().__init__(paths, transform, seed=seed, cache_size=0 if cache else None)

    def _build_cache(self, paths: list[Path], size: int) -> tuple[list[Path], list[np.ndarray]]:
        kept, cache = [], []
        for path in paths:
            try:
                cache.append(read_bands(path, self.channels, self.layout))
                kept.append(path)
            except BandFileError as error:
                _log.warning("skipping band file: %s", error)
                self.skipped.append(str(path))
        return kept, cache

    def _image(self, index: int) -> torch.Tensor:  # type: ignore[override]
        if self.cache is not None:
            return torch.from_numpy(self.cache[index])
        return torch.from_numpy(read_bands(self.paths[index], self.channels, self.layout))


def band_paths(path: str | None, file_list: str | None) -> list[Path]:
    """Band files of a folder (recursive) or a file list."""
    return list_band_files(path) if path is not None else read_file_list(str(file_list))


def build_band_dataset(cfg: TrainConfig) -> BandDataset:
    """The dataset of a band run (``data.channels`` set): band files with the band multi-crop."""
    d, c = cfg.data, cfg.crops
    norm = band_normalization(cfg)
    assert norm is not None and d.channels is not None
    augmentation = BandMultiCrop(c.global_size, c.local_size, c.global_scale, c.local_scale,
                                 c.local_crops_number, cfg.bands, norm)
    return BandDataset(band_paths(d.path, d.file_list), augmentation, d.channels, d.channel_layout,
                       seed=cfg.run.seed, cache=d.cache_size is not None)


def band_statistics(
    paths: list[Path],
    channels: int,
    layout: Layout = "auto",
    *,
    sample: int = 1000,
    seed: int = 0,
    clip_percentiles: tuple[float, float] | None = None,
    stretch: str = "none",
    arcsinh_scale: float = 1.0,
) -> tuple[dict[str, Any], list[str]]:
    """Per-band mean / std (after optional percentile clipping and stretch) over a random sample.

    Returns:
        (the ``bands`` config section, the files skipped as unreadable or of another band count).

    Raises:
        BandFileError: no file of the sample could be read.
    """
    rng = np.random.default_rng(seed)
    chosen = [paths[i] for i in sorted(rng.choice(len(paths), min(sample, len(paths)), replace=False))]
    arrays, skipped = [], []
    for path in chosen:
        try:
            arrays.append(read_bands(path, channels, layout))
        except BandFileError as error:
            _log.warning("skipping band file: %s", error)
            skipped.append(str(path))
    if not arrays:
        raise BandFileError(f"none of the {len(chosen)} sampled band files could be read as {channels} bands")
    pixels = np.concatenate([a.reshape(channels, -1) for a in arrays], axis=1)
    low = high = None
    if clip_percentiles is not None:
        low = np.percentile(pixels, clip_percentiles[0], axis=1).tolist()
        high = np.percentile(pixels, clip_percentiles[1], axis=1).tolist()
    norm = BandNormalization(channels, clip_low=None if low is None else tuple(low),
                             clip_high=None if high is None else tuple(high), stretch=stretch,  # type: ignore[arg-type]
                             arcsinh_scale=arcsinh_scale)
    values = norm.stretched(torch.from_numpy(pixels).view(channels, 1, -1)).view(channels, -1).double()
    std = values.std(dim=1).clamp_min(1e-12)
    section = {"mean": values.mean(dim=1).tolist(), "std": std.tolist(), "clip_low": low, "clip_high": high,
               "stretch": stretch, "arcsinh_scale": arcsinh_scale}
    return section, skipped


def write_stats_config(output: str | os.PathLike[str], channels: int, layout: str,
                       section: dict[str, Any]) -> Path:
    """Merge ``data.channels`` / ``data.channel_layout`` and the ``bands`` statistics into a JSON config
    file (created, or updated keeping its other settings), usable as ``dinofeat-train train --config``."""
    file = Path(output)
    data: dict[str, Any] = json.loads(file.read_text()) if file.is_file() else {}
    data.setdefault("data", {}).update({"channels": channels, "channel_layout": layout})
    data.setdefault("bands", {}).update(section)
    write_text_atomically(file, json.dumps(data, indent=2) + "\n")
    return file
