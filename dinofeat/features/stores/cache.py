"""Features of large image sets streamed to disk, and a cache of them keyed by model and settings.

:func:`stream_features` writes each torchrun process's rows into its own memory-mapped ``.npy``
shard as they are computed (memory stays at one batch), then rank 0 interleaves the shards into
the final ``.npy`` file, written under a temporary name and renamed: a file under its final name
is always complete. :func:`cached_features` names that file after a hash of everything that
decides its content (model, protocol settings, the file list), so a re-run with the same settings
reuses it and any change extracts anew; a killed run leaves nothing that could be mistaken for a
finished cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.format import open_memmap

from dinofeat.features.extractor import FeatureExtractor
from dinofeat.features.image_files import feature_batches
from dinofeat.utils.atomic_write import replace_atomically
from dinofeat.utils.distributed import barrier, rank_and_world, shard_indices

#: Rows copied per step when rank 0 interleaves the shards (bounds its memory).
MERGE_CHUNK_ROWS = 65536


def cache_key(**settings: Any) -> str:
    """A short stable hash of JSON-serialisable settings (model id, protocol options, file list).

    Example:
        >>> cache_key(model="vit_s16", imsize=224) == cache_key(imsize=224, model="vit_s16")
        True
    """
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _shard_path(path: Path, rank: int, world: int) -> Path:
    return path.with_name(f".{path.name}.rank{rank}-of-{world}.npy")


def stream_features(
    extractor: FeatureExtractor, files: Sequence[Path], path: str | os.PathLike[str], **extraction: Any
) -> Path | None:
    """Extract the features of ``files`` into the ``.npy`` file ``path`` without holding them in memory.

    Args:
        extractor: The model.
        files: Image paths; row ``i`` of the file is ``files[i]``.
        path: The final ``.npy`` file (float32, (len(files), dim)).
        **extraction: Passed to :func:`~dinofeat.features.image_files.feature_batches`
            (``feature_fn``, ``batch_size``, ``num_workers``, ``transform``, ``progress``, ...).

    Returns:
        ``path`` on rank 0, None on the other torchrun ranks.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    rank, world = rank_and_world()
    shard_rows = len(shard_indices(len(files), rank, world))
    shard_file = _shard_path(target, rank, world)
    array: np.memmap[Any, np.dtype[np.float32]] | None = None
    row = 0
    try:
        for batch in feature_batches(extractor, files, **extraction):
            if array is None:
                array = open_memmap(
                    shard_file, mode="w+", dtype=np.float32, shape=(shard_rows, batch.shape[1])
                )
            array[row : row + batch.shape[0]] = batch.numpy()
            row += batch.shape[0]
        assert array is not None and row == shard_rows
        array.flush()
        del array
    except BaseException:
        shard_file.unlink(missing_ok=True)
        raise
    if world > 1:
        barrier()
    if rank != 0:
        return None
    shards = [_shard_path(target, r, world) for r in range(world)]
    try:
        if world == 1:
            os.replace(shard_file, target)
        else:
            replace_atomically(lambda temporary: _interleave(shards, temporary, len(files)), target)
    finally:
        for shard in shards:
            shard.unlink(missing_ok=True)
    return target


def _interleave(shards: list[Path], output: Path, total: int) -> None:
    """Rows ``r, r + world, ...`` come from shard ``r`` (the order of :func:`shard_indices`)."""
    world = len(shards)
    parts = [np.load(shard, mmap_mode="r") for shard in shards]
    merged = open_memmap(output, mode="w+", dtype=np.float32, shape=(total, parts[0].shape[1]))
    for rank, part in enumerate(parts):
        for start in range(0, part.shape[0], MERGE_CHUNK_ROWS):
            rows = part[start : start + MERGE_CHUNK_ROWS]
            first = rank + start * world
            merged[first : first + rows.shape[0] * world : world] = rows
    merged.flush()


def cached_features(
    extractor: FeatureExtractor,
    files: Sequence[Path],
    cache_dir: str | os.PathLike[str] | None,
    name: str,
    key: str,
    **extraction: Any,
) -> np.ndarray | None:
    """The features of ``files`` from ``cache_dir/<name>-<key>.npy``, extracting them there if absent.

    Args:
        extractor: The model.
        files: Image paths.
        cache_dir: Folder of cached feature files; None extracts into a temporary file and removes it.
        name: Human-readable part of the file name (e.g. ``"roxford5k-db"``).
        key: :func:`cache_key` of the model and settings that decide the content.
        **extraction: As :func:`stream_features`.

    Returns:
        A read-only memory map (len(files), dim) on rank 0; None on the other ranks.
    """
    if cache_dir is None:
        with tempfile.TemporaryDirectory(prefix="dinofeat-features-") as scratch:
            written = stream_features(extractor, files, Path(scratch) / f"{name}.npy", **extraction)
            return None if written is None else np.load(written)
    path = Path(cache_dir) / f"{name}-{key}.npy"
    if not path.is_file():
        if stream_features(extractor, files, path, **extraction) is None:
            return None
    elif rank_and_world()[0] != 0:
        return None
    features: np.ndarray = np.load(path, mmap_mode="r")
    if features.ndim != 2 or features.shape[0] != len(files):
        raise ValueError(
            f"cached features {path} hold {features.shape} rows, expected {len(files)}: "
            "delete the file to extract again"
        )
    return features
