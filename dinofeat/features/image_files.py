"""Features of many image files: batches decoded by DataLoader workers, sharded over torchrun processes,
run through :func:`~dinofeat.features.loop.run_batches` and gathered on rank 0 in the original order
(one process is the same code path with a single shard)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import torch
from torch.utils.data import Subset
from tqdm.auto import tqdm

from dinofeat.data.datasets import ImageTransform, PreprocessedImages
from dinofeat.data.preprocess import Size
from dinofeat.features.extractor import FeatureExtractor
from dinofeat.features.loop import image_loader, run_batches
from dinofeat.utils.distributed import gather_in_order, rank_and_world, shard_indices
from dinofeat.utils.errors import ImageReadError

BatchFeatures = Callable[[torch.Tensor], torch.Tensor]


def feature_batches(extractor: FeatureExtractor, files: Sequence[Path], *,
                    feature_fn: BatchFeatures | None = None, batch_size: int = 64,
                    num_workers: int | None = None, size: Size | None = None,
                    transform: ImageTransform | None = None, progress: bool = True,
                    skip_unreadable: bool = False) -> Iterator[torch.Tensor]:
    """This process's shard of the features of ``files`` (see :func:`shard_indices`), batch by batch.

    :func:`extract_features` gathers the batches in memory,
    :func:`dinofeat.features.stores.cache.stream_features` streams them to disk. Arguments as
    :func:`extract_features`.
    """
    if not files:
        raise ValueError("no image files to extract features from")
    rank, world = rank_and_world()
    dataset = PreprocessedImages(files, extractor.preprocess, size, transform)
    loader = image_loader(Subset(dataset, shard_indices(len(files), rank, world)), extractor.device,
                          batch_size=batch_size, num_workers=num_workers)
    bar = tqdm(loader, desc=f"features ({extractor.name or 'model'})", unit="batch",
               disable=not progress or rank != 0)
    compute = feature_fn if feature_fn is not None else extractor
    for features, errors in run_batches(_readable(bar, skip_unreadable), compute, extractor.device,
                                        extractor.dtype):
        unreadable = torch.tensor([bool(message) for message in errors])
        yield torch.where(unreadable[:, None], float("nan"), features.float().cpu())


def _readable(batches: Iterable[tuple[torch.Tensor, list[str]]], skip_unreadable: bool
              ) -> Iterator[tuple[torch.Tensor, list[str]]]:
    """The batches, after refusing one with an unreadable image (named) unless ``skip_unreadable``."""
    for batch, errors in batches:
        if any(errors) and not skip_unreadable:
            raise ImageReadError(next(message for message in errors if message))
        yield batch, errors


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
        num_workers: DataLoader workers decoding images (default
            :func:`~dinofeat.features.loop.default_num_workers`).
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
