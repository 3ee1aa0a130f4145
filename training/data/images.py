"""Training images: discovery (folder or file list), decoding, optional in-memory cache, and a
sampler whose order and augmentation depend only on (seed, epoch, sample index).

Corrupt-image policy: an image that cannot be opened or decoded is never fatal. With the
cache enabled it is detected while the cache is built, left out of the dataset and counted
(``ImageDataset.skipped``). Without the cache it is detected when first read: a warning names
the file, the sample is replaced by the next readable image in the list (deterministically)
and the sample reports how many files it skipped, which the trainer sums into the epoch's
``skipped_images`` metric. A dataset in which no image can be read raises ``RuntimeError``.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, DistributedSampler

from dinofeat.data.files import open_image
from dinofeat.utils.errors import ImageReadError

_log = logging.getLogger(__name__)
_DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError)


def load_rgb(path: Path, shorter_side: int | None = None) -> Image.Image:
    """Decode an image as RGB (greyscale replicated, alpha dropped), optionally downscaled."""
    img = open_image(path)  # names the file, and refuses decompression bombs
    if shorter_side is not None and min(img.size) > shorter_side:
        width, height = img.size
        scale = shorter_side / min(width, height)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        img = img.resize(size, Image.Resampling.BICUBIC)
    return img


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed that depends only on (seed, epoch, index)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class ImageDataset(Dataset[tuple[list[torch.Tensor], int]]):
    """Images + a crop transform; items are requested as ``(epoch, index)`` pairs.

    Args:
        paths: Image files.
        transform: PIL image -> list of crop tensors (e.g. MultiCropAugmentation).
        seed: Run seed; the transform's randomness is seeded from (seed, epoch, index).
        cache_size: If set, decode every image once now, downscaled so its shorter side is
            ``cache_size`` px, and keep it in memory as uint8.
    """

    def __init__(self, paths: list[Path], transform: Callable[[Image.Image], list[torch.Tensor]],
                 seed: int = 0, cache_size: int | None = None) -> None:
        self.transform = transform
        self.seed = seed
        self.skipped: list[str] = []
        self.cache: list[np.ndarray] | None = None
        if cache_size is not None:
            self.paths, self.cache = self._build_cache(paths, cache_size)
        else:
            self.paths = list(paths)
        if not self.paths:
            raise ImageReadError(f"none of the {len(paths)} images could be read")

    def _build_cache(self, paths: list[Path], size: int) -> tuple[list[Path], list[np.ndarray]]:
        kept, cache = [], []
        for path in paths:
            try:
                cache.append(np.asarray(load_rgb(path, size), dtype=np.uint8))
                kept.append(path)
            except _DECODE_ERRORS as error:
                _log.warning("skipping unreadable image %s: %s", path, error)
                self.skipped.append(str(path))
        return kept, cache

    def __len__(self) -> int:
        return len(self.paths)

    def _image(self, index: int) -> Image.Image:
        if self.cache is not None:
            return Image.fromarray(self.cache[index])
        return load_rgb(self.paths[index])

    def __getitem__(self, key: tuple[int, int] | int) -> tuple[list[torch.Tensor], int]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        skipped = 0
        for attempt in range(len(self.paths)):
            current = (index + attempt) % len(self.paths)
            try:
                image = self._image(current)
                break
            except _DECODE_ERRORS as error:
                _log.warning("skipping unreadable image %s: %s", self.paths[current], error)
                skipped += 1
        else:
            raise ImageReadError(f"none of the {len(self.paths)} images could be read")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, epoch, index))
            crops = self.transform(image)
        return crops, skipped


class EpochSampler(DistributedSampler[Any]):
    """``DistributedSampler`` that yields ``(epoch, index)`` so the dataset can seed per sample.

    With ``num_replicas=1`` it is the single-process sampler; the order is a function of
    (seed, epoch) only, so a resumed run sees the same data as an uninterrupted one.
    """

    skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Select the epoch; ``skip``: leave out this process's first ``skip`` samples of it (a resume
        from a mid-epoch checkpoint)."""
        super().set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        for index in itertools.islice(super().__iter__(), self.skip, None):
            yield epoch, int(index)


def collate_crops(batch: list[tuple[list[torch.Tensor], int]]) -> tuple[list[torch.Tensor], int]:
    """Stack crop i of every sample; sum the skipped-file counts."""
    n_crops = len(batch[0][0])
    crops = [torch.stack([sample[0][i] for sample in batch]) for i in range(n_crops)]
    return crops, sum(sample[1] for sample in batch)
