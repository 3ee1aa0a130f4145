"""Datasets of preprocessed images for the batch loop (:mod:`dinofeat.features.loop`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from dinofeat.config.preprocess import PreprocessConfig
from dinofeat.data.files import open_image
from dinofeat.data.preprocess import Size, preprocess_pil
from dinofeat.utils.errors import ImageReadError

#: A PIL image -> its (3, H, W) model input, for protocols with their own preprocessing.
ImageTransform = Callable[[Image.Image], torch.Tensor]


class PreprocessedImages(Dataset[tuple[torch.Tensor, str]]):
    """Image files -> (normalised tensor, "") with the model's evaluation preprocessing.

    An unreadable file gives (a blank image's tensor, the error message) instead of raising, so that
    the decision to stop or to skip is taken once, in the main process, with a one-line message.
    """

    def __init__(self, files: Sequence[Path], preprocess: PreprocessConfig, size: Size | None = None,
                 transform: ImageTransform | None = None) -> None:
        self.files = list(files)
        self.preprocess = preprocess
        self.size = size
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def _prepare(self, image: Image.Image) -> torch.Tensor:
        if self.transform is not None:
            return self.transform(image)
        return preprocess_pil(image, self.preprocess, self.size)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        try:
            return self._prepare(open_image(self.files[index])), ""
        except ImageReadError as error:
            # Every evaluation transform has a fixed output size (or batches hold one image), so the
            # blank stand-in fits the batch.
            return self._prepare(Image.new("RGB", (256, 256))), str(error)
