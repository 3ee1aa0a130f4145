"""Image collections for large-scale extraction: folders, file lists and WebDataset-style tar shards,
cut into *units* (the images of one output shard), each read as a stream of decoded samples.

A unit is either a chunk of ``shard_size`` consecutive image files, or one tar shard (WebDataset
layout: the members of one sample share a key, ``000123.jpg`` + ``000123.json``; the image member
is the sample, the others become its metadata). Tar shards are read sequentially and never listed
in memory as a whole collection.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from io import BytesIO
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import IterableDataset, get_worker_info

from dinofeat.config.preprocess import PreprocessConfig
from dinofeat.data.files import IMAGE_SUFFIXES, list_image_files, open_image, read_file_list
from dinofeat.data.preprocess import Size, preprocess_pil
from dinofeat.utils.errors import ImageReadError

TAR_SUFFIXES = (".tar",)
METADATA_MAX_BYTES = 1 << 16  # text members beyond this are not metadata (a second image, a blob)
UNIT_FAILED = -1  # Sample.position of the error that ends a unit (a damaged tar shard)


@dataclass(frozen=True)
class Unit:
    """The inputs of one output shard: image files, or one tar shard."""

    index: int
    files: tuple[str, ...] = ()
    tar: str | None = None

    def fingerprint(self) -> str:
        """What the unit is made of (file names; the tar's path and size): changes if its inputs do."""
        what = [self.tar, str(os.path.getsize(self.tar))] if self.tar is not None else list(self.files)
        return hashlib.sha256("\n".join(what).encode()).hexdigest()[:16]

    def count(self) -> int:
        """Number of samples (reads the tar's member headers)."""
        if self.tar is None:
            return len(self.files)
        return sum(1 for _ in _tar_samples(self.tar, read=False))


def plan_units(paths: Sequence[str | os.PathLike[str]], shard_size: int,
               files_from: str | os.PathLike[str] | None = None) -> list[Unit]:
    """Cut the inputs into units, in the order given: folders (searched recursively, sorted), image
    files, ``.tar`` shards (one unit each) and the images ``files_from`` lists
    (:func:`~dinofeat.data.files.read_file_list`). Paths are made absolute.

    Raises:
        FileNotFoundError: an input does not exist, or nothing to extract was found.
        ValueError: ``shard_size`` is not positive.
    """
    if shard_size <= 0:
        raise ValueError(f"shard size must be positive, got {shard_size}")
    units: list[Unit] = []
    pending: list[str] = []

    def flush() -> None:
        for start in range(0, len(pending), shard_size):
            units.append(Unit(len(units), files=tuple(pending[start:start + shard_size])))
        pending.clear()

    listed = read_file_list(files_from) if files_from is not None else []
    for item in [*paths, *listed]:
        path = Path(os.path.abspath(item))  # rows name their image the same way from any folder
        if path.suffix.lower() in TAR_SUFFIXES and path.is_file():
            flush()
            units.append(Unit(len(units), tar=str(path)))
        elif path.is_dir():
            pending.extend(str(p) for p in list_image_files(path))
        elif path.is_file():
            pending.append(str(path))
        else:
            raise FileNotFoundError(f"no such image file, folder or tar shard: {item}")
    flush()
    if not units:
        raise FileNotFoundError("no images to extract")
    return units


@dataclass(frozen=True)
class Sample:
    """One decoded, preprocessed image of a unit. ``error`` is set (and ``image`` blank) if unreadable."""

    position: int
    path: str
    image: torch.Tensor
    width: int
    height: int
    metadata: str | None
    error: str = ""


class UnitImages(IterableDataset[Sample]):
    """The samples of one unit, preprocessed; DataLoader worker ``w`` of ``n`` decodes positions ``w::n``
    (the caller restores the order by ``position``)."""

    def __init__(self, unit: Unit, preprocess: PreprocessConfig, size: Size | None) -> None:
        self.unit = unit
        self.preprocess = preprocess
        self.size = size

    def __iter__(self) -> Iterator[Sample]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if self.unit.tar is None:
            for position in range(worker, len(self.unit.files), workers):
                name = self.unit.files[position]
                yield self._sample(position, name, partial(open_image, name), None)
            return
        try:
            for position, (name, data, metadata) in enumerate(_tar_samples(self.unit.tar, read=True)):
                if position % workers == worker:
                    yield self._sample(position, name, partial(_decode, data, name), metadata)
        except ImageReadError as error:  # the shard itself is damaged: the whole unit fails
            yield Sample(UNIT_FAILED, self.unit.tar, torch.zeros(0), 0, 0, None, str(error))

    def _sample(self, position: int, name: str, decode: Callable[[], Image.Image], metadata: str | None
                ) -> Sample:
        try:
            image = decode()
        except ImageReadError as error:
            blank = preprocess_pil(Image.new("RGB", (256, 256)), self.preprocess, self.size)
            return Sample(position, name, blank, 0, 0, metadata, str(error))
        tensor = preprocess_pil(image, self.preprocess, self.size)
        return Sample(position, name, tensor, image.width, image.height, metadata)


def _decode(data: bytes, name: str) -> Image.Image:
    try:
        with Image.open(BytesIO(data)) as image:
            image.load()
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise ImageReadError(f"cannot read image {name}: {error}") from None


def _tar_samples(tar: str, *, read: bool) -> Iterator[tuple[str, bytes, str | None]]:
    """(``tar#member``, image bytes, metadata JSON) per sample, in member order (bytes empty unless ``read``).

    Raises:
        ImageReadError: the tar itself cannot be read; the message names it.
    """
    try:
        with tarfile.open(tar, "r:") as archive:
            key, image, extras = None, None, {}
            for member in archive:
                if not member.isfile():
                    continue
                stem, _, ext = Path(member.name).name.partition(".")
                member_key = str(Path(member.name).parent / stem)
                if member_key != key and image is not None:
                    yield _finish(tar, image, extras)
                    image, extras = None, {}
                key = member_key
                if f".{ext.lower()}" in IMAGE_SUFFIXES and image is None:
                    image = (member.name, _read(archive, member) if read else b"")
                elif read and member.size <= METADATA_MAX_BYTES:
                    extras[ext] = _read(archive, member).decode("utf-8", errors="replace")
            if image is not None:
                yield _finish(tar, image, extras)
    except (tarfile.TarError, OSError, EOFError) as error:
        raise ImageReadError(f"cannot read tar shard {tar}: {error}") from None


def _read(archive: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = archive.extractfile(member)
    assert handle is not None  # a regular file
    return handle.read()


def _finish(tar: str, image: tuple[str, bytes], extras: dict[str, str]) -> tuple[str, bytes, str | None]:
    return f"{tar}#{image[0]}", image[1], json.dumps(extras, sort_keys=True) if extras else None
