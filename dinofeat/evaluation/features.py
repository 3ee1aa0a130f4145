"""Feature extraction over ImageFolder-style datasets, with caching to safetensors.

A dataset root holds one sub-folder per class (sorted names -> labels 0, 1, ..., exactly like
``torchvision.datasets.ImageFolder``). Extraction runs through a batched DataLoader with
workers; under ``torchrun`` each process extracts a shard and rank 0 receives all features in
the original order (one process is the same code path with a single shard).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from dinofeat.atomic_write import replace_atomically
from dinofeat.config import PreprocessConfig
from dinofeat.errors import ImageReadError
from dinofeat.evaluation.distributed import gather_in_order, rank_and_world, shard_indices
from dinofeat.extractor import FeatureExtractor
from dinofeat.inputs import IMAGE_SUFFIXES, open_image
from dinofeat.preprocess import Size, preprocess_pil

FEATURES_FORMAT = "dinofeat-features"
FEATURES_VERSION = 1
BatchFeatures = Callable[[torch.Tensor], torch.Tensor]
#: A PIL image -> its (3, H, W) model input, for protocols with their own preprocessing.
ImageTransform = Callable[[Image.Image], torch.Tensor]


@dataclass(frozen=True)
class LabeledFiles:
    """Image files with their class index and the sorted class names."""

    files: list[Path]
    labels: list[int]
    class_names: list[str]


def scan_image_folder(root: str | os.PathLike[str]) -> LabeledFiles:
    """Files and labels of an ImageFolder-style directory (class sub-folders, searched recursively).

    Raises:
        FileNotFoundError: ``root`` is missing, has no class sub-folders, or a class folder has no images.

    Example:
        >>> scan_image_folder("imagenette2/val").class_names[:2]  # doctest: +SKIP
        ['n01440764', 'n02102040']
    """
    path = Path(root)
    if not path.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {path}")
    classes = sorted(entry.name for entry in os.scandir(path) if entry.is_dir())
    if not classes:
        raise FileNotFoundError(f"{path} has no class sub-folders (expected ROOT/<class>/<image>)")
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        found = sorted(p for p in (path / name).rglob("*") if _is_image(p))
        if not found:
            raise FileNotFoundError(f"class folder {path / name} contains no image files")
        files.extend(found)
        labels.extend([label] * len(found))
    return LabeledFiles(files, labels, classes)


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


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


def default_num_workers() -> int:
    """Decoding workers: 4, or fewer on a machine with fewer cores."""
    return min(4, os.cpu_count() or 1)


@torch.inference_mode()
def feature_batches(extractor: FeatureExtractor, files: Sequence[Path], *,
                    feature_fn: BatchFeatures | None = None, batch_size: int = 64,
                    num_workers: int | None = None, size: Size | None = None,
                    transform: ImageTransform | None = None, progress: bool = True,
                    skip_unreadable: bool = False) -> Iterator[torch.Tensor]:
    """This process's shard of the features of ``files`` (see :func:`shard_indices`), batch by batch.

    The one extraction loop of dinofeat: :func:`extract_features` gathers its batches in memory,
    :func:`dinofeat.evaluation.feature_cache.stream_features` streams them to disk. Arguments as
    :func:`extract_features`.
    """
    if not files:
        raise ValueError("no image files to extract features from")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    compute = feature_fn if feature_fn is not None else extractor
    rank, world = rank_and_world()
    dataset = PreprocessedImages(files, extractor.preprocess, size, transform)
    shard = Subset(dataset, shard_indices(len(files), rank, world))
    workers = default_num_workers() if num_workers is None else num_workers
    loader = DataLoader(shard, batch_size=batch_size, num_workers=workers, shuffle=False,
                        pin_memory=extractor.device.type == "cuda")
    bar = tqdm(loader, desc=f"features ({extractor.name or 'model'})", unit="batch",
               disable=not progress or rank != 0)
    for batch, errors in bar:
        unreadable = torch.tensor([bool(message) for message in errors])
        if unreadable.any() and not skip_unreadable:
            raise ImageReadError(next(message for message in errors if message))
        features = compute(batch.to(extractor.device, extractor.dtype)).float().cpu()
        features[unreadable] = float("nan")
        yield features


def extract_features(extractor: FeatureExtractor, files: Sequence[Path], *,
                     feature_fn: BatchFeatures | None = None, batch_size: int = 64,
                     num_workers: int | None = None, size: Size | None = None,
                     transform: ImageTransform | None = None, progress: bool = True,
                     skip_unreadable: bool = False) -> torch.Tensor | None:
    """Features of ``files`` (float32, CPU), sharded over torchrun processes and gathered on rank 0.

    Args:
        extractor: The model.
        files: Image paths.
        feature_fn: Preprocessed batch -> (batch, dim) features; default the CLS embedding
            (``extractor(batch)``).
        batch_size: Images per forward pass (per process).
        num_workers: DataLoader workers decoding images (default :func:`default_num_workers`).
        size: Optional crop size / (H, W), as in :meth:`FeatureExtractor.embed`.
        transform: PIL image -> model input, replacing the model's preprocessing (and ``size``);
            with inputs of varying sizes, use ``batch_size=1``.
        progress: Show a progress bar (on rank 0).
        skip_unreadable: Give an unreadable image a row of NaN (see :func:`drop_unreadable`) instead
            of stopping.

    Returns:
        (len(files), dim) features in the order of ``files`` on rank 0; None on other ranks.

    Raises:
        ImageReadError: an image cannot be read and ``skip_unreadable`` is false; the message names it.
    """
    parts = list(feature_batches(extractor, files, feature_fn=feature_fn, batch_size=batch_size,
                                 num_workers=num_workers, size=size, transform=transform, progress=progress,
                                 skip_unreadable=skip_unreadable))
    return gather_in_order(torch.cat(parts), len(files))


def drop_unreadable(files: Sequence[Path], features: torch.Tensor
                    ) -> tuple[list[Path], torch.Tensor, list[Path]]:
    """Split :func:`extract_features` output (``skip_unreadable=True``) into the readable files with
    their features, and the unreadable files (rows of NaN).

    Example:
        >>> kept, feats, skipped = drop_unreadable([Path("a.png"), Path("b.png")],
        ...                                        torch.tensor([[1.0], [float("nan")]]))
        >>> [p.name for p in kept], feats.tolist(), [p.name for p in skipped]
        (['a.png'], [[1.0]], ['b.png'])
    """
    readable = ~features.isnan().any(dim=1)
    kept = [f for f, ok in zip(files, readable.tolist(), strict=True) if ok]
    skipped = [f for f, ok in zip(files, readable.tolist(), strict=True) if not ok]
    return kept, features[readable], skipped


@dataclass
class FeatureSet:
    """Features of a labelled dataset with everything needed to reuse them safely."""

    features: torch.Tensor
    labels: torch.Tensor
    files: list[str]
    class_names: list[str]
    model: str
    kind: str = "cls"

    def __post_init__(self) -> None:
        count = self.features.shape[0]
        if self.features.ndim != 2 or self.labels.shape != (count,) or len(self.files) != count:
            raise ValueError(f"inconsistent feature set: features {tuple(self.features.shape)}, "
                             f"labels {tuple(self.labels.shape)}, {len(self.files)} files")

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write one safetensors file atomically (temporary file, then rename)."""
        meta = {"format": FEATURES_FORMAT, "version": FEATURES_VERSION, "model": self.model,
                "kind": self.kind, "dim": self.dim, "count": len(self.files), "class_names": self.class_names}
        # The file list is stored as UTF-8 bytes in a tensor: safetensors headers are capped at 100 MB.
        names = torch.frombuffer(bytearray("\n".join(self.files).encode()), dtype=torch.uint8)
        tensors = {"features": self.features.contiguous(), "labels": self.labels.long().contiguous(),
                   "files_utf8": names if names.numel() else torch.zeros(0, dtype=torch.uint8)}
        metadata = {"dinofeat": json.dumps(meta)}
        replace_atomically(lambda temporary: save_file(tensors, str(temporary), metadata=metadata), path)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, model: str | None = None, kind: str | None = None
             ) -> FeatureSet:
        """Read a file written by :meth:`save`, checking format, counts and (if given) model and kind."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"feature file not found: {path}")
        try:
            with safe_open(str(path), "pt") as handle:
                meta_text = (handle.metadata() or {}).get("dinofeat")
                if meta_text is None:
                    raise ValueError(f"{path} is not a dinofeat feature file (no 'dinofeat' metadata)")
                meta: dict[str, Any] = json.loads(meta_text)
                tensors = {key: handle.get_tensor(key) for key in ("features", "labels", "files_utf8")}
        except SafetensorError as error:
            raise ValueError(f"{path} is not a readable safetensors feature file: {error}") from None
        if meta.get("format") != FEATURES_FORMAT or meta.get("version") != FEATURES_VERSION:
            raise ValueError(f"{path}: unsupported feature file format {meta.get('format')} "
                             f"version {meta.get('version')}")
        names = tensors["files_utf8"]
        files = bytes(names.numpy()).decode().split("\n") if names.numel() else []
        loaded = cls(tensors["features"], tensors["labels"], files, list(meta["class_names"]), meta["model"],
                     meta["kind"])
        if loaded.dim != meta["dim"] or len(files) != meta["count"]:
            raise ValueError(f"{path} is corrupt: header says {meta['count']} x {meta['dim']}, "
                             f"data is {tuple(loaded.features.shape)}")
        for field_name, wanted in (("model", model), ("kind", kind)):
            if wanted is not None and meta[field_name] != wanted:
                raise ValueError(f"{path} holds features of {field_name} {meta[field_name]!r}, "
                                 f"not {wanted!r}")
        return loaded


def extract_folder(extractor: FeatureExtractor, root: str | os.PathLike[str] | LabeledFiles, *, model: str,
                   feature_fn: BatchFeatures | None = None, kind: str = "cls", batch_size: int = 64,
                   num_workers: int | None = None, progress: bool = True) -> FeatureSet | None:
    """Features of an ImageFolder-style directory as a :class:`FeatureSet` (None on ranks other than 0).

    ``root`` may also be the folder's :func:`scan_image_folder` listing, so that a caller who scanned it
    already (to check it, or to extract it repeatedly) does not walk the folder again.

    Example:
        >>> model = dinofeat.load("vit_s16")  # doctest: +SKIP
        >>> fs = extract_folder(model, "imagenette2/val", model="vit_s16")  # doctest: +SKIP
        >>> fs.features.shape  # doctest: +SKIP
        torch.Size([3925, 384])
    """
    listing = root if isinstance(root, LabeledFiles) else scan_image_folder(root)
    features = extract_features(extractor, listing.files, feature_fn=feature_fn, batch_size=batch_size,
                                num_workers=num_workers, progress=progress)
    if features is None:
        return None
    return FeatureSet(features, torch.tensor(listing.labels, dtype=torch.long),
                      [str(f) for f in listing.files], listing.class_names, model, kind)
