"""The one batch loop: every path that runs a model over many images goes through :func:`run_batches`.

The extractor's methods (images given in memory), the features of image files (decoded by DataLoader
workers, sharded over torchrun processes), the Parquet shards of large collections, the feature
cache and video frames differ only in where their batches come from. The loop moves each batch to the
model's device and dtype, runs the forward under inference mode, and hands the result back with what
the caller attached to the batch (row indices, file names, read errors).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import torch
from torch.utils.data import DataLoader, Dataset

Rows = TypeVar("Rows")
Result = TypeVar("Result")


def default_num_workers() -> int:
    """Decoding workers: 4, or fewer on a machine with fewer cores."""
    return min(4, os.cpu_count() or 1)


def image_loader(dataset: Dataset[Any], device: torch.device, *, batch_size: int, num_workers: int | None,
                 collate_fn: Callable[[list[Any]], Any] | None = None) -> DataLoader[Any]:
    """Batches of ``dataset`` in order, decoded by ``num_workers`` processes (default
    :func:`default_num_workers`), in pinned memory when they go to a GPU."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    workers = default_num_workers() if num_workers is None else num_workers
    return DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=False,
                      collate_fn=collate_fn, pin_memory=device.type == "cuda")


@torch.inference_mode()
def run_batches(batches: Iterable[tuple[torch.Tensor, Rows]], forward: Callable[[torch.Tensor], Result],
                device: torch.device, dtype: torch.dtype) -> Iterator[tuple[Result, Rows]]:
    """``(forward(images), rows)`` for each ``(images, rows)`` of ``batches``, with the images on ``device``
    in ``dtype`` and autograd off (only while the loop runs: the caller's code between batches is not
    in inference mode)."""
    for images, rows in batches:
        yield forward(images.to(device, dtype, non_blocking=True)), rows
