"""Where the rows added to an index come from: arrays in memory, or a `dinofeat embed` shard folder.

A source yields batches of (paths, unit-norm float32 features) in a fixed order, knows its row count
without reading the features, splits into contiguous shares for several processes, and says where
its rows' features can later be read one at a time (the shards, when they are stored plainly).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from dinofeat.features.stores.shard_pages import FEATURE_COLUMN, PageMap, ShardLayoutError, page_map
from dinofeat.features.stores.shards import iter_shard_tables, shard_manifest

_log = logging.getLogger(__name__)
ARRAY_BATCH = 65536


@dataclass(frozen=True)
class Batch:
    """Rows of a source: paths, (n, dim) unit-norm float32 features, and for shard rows, where they are."""

    paths: list[str]
    features: np.ndarray
    shard: int = -1
    rows: np.ndarray | None = None


def unit_rows(features: np.ndarray) -> np.ndarray:
    """float32 copy of ``features`` with rows scaled to unit L2 norm (zero rows stay zero)."""
    array = np.array(features, dtype=np.float32)
    array /= np.maximum(np.linalg.norm(array, axis=1, keepdims=True), 1e-12)
    return array


class ArraySource:
    """Rows given in memory: ``paths[i]`` has the descriptor ``features[i]``."""

    def __init__(self, paths: Sequence[str], features: np.ndarray) -> None:
        if features.ndim != 2 or features.shape[0] != len(paths):
            raise ValueError(f"expected ({len(paths)}, dim) features, got {features.shape}")
        self.paths = list(paths)
        self.features = features
        self.dim = int(features.shape[1])

    def count(self) -> int:
        return len(self.paths)

    def identity(self) -> str:
        digest = hashlib.sha256("\n".join(self.paths).encode())
        digest.update(np.ascontiguousarray(self.features, dtype=np.float32).tobytes())
        return digest.hexdigest()[:16]

    def share(self, rank: int, world: int) -> ArraySource:
        start, stop = self.count() * rank // world, self.count() * (rank + 1) // world
        return ArraySource(self.paths[start:stop], self.features[start:stop])

    def all_paths(self) -> pa.Array:
        return pa.array(self.paths, pa.string())

    def batches(self) -> Iterator[Batch]:
        for start in range(0, self.count(), ARRAY_BATCH):
            stop = start + ARRAY_BATCH
            yield Batch(self.paths[start:stop], unit_rows(self.features[start:stop]))

    def shard_files(self) -> None:
        return None


class ShardSource:
    """The rows of a complete shard folder written by ``dinofeat embed -o FOLDER`` (or a contiguous share)."""

    def __init__(self, folder: str | os.PathLike[str], first: int = 0, last: int | None = None) -> None:
        self.folder = Path(folder).absolute()
        self.meta = shard_manifest(self.folder)
        self._first = first
        self.shards = [s for s in self.meta["shards"] if s["count"]][first:last]
        self.dim = int(self.meta.get("dim") or 0)

    def count(self) -> int:
        return sum(int(s["count"]) for s in self.shards)

    def identity(self) -> str:
        what = [str(self.folder), self.meta.get("plan"), [s["file"] for s in self.shards]]
        return hashlib.sha256(json.dumps(what).encode()).hexdigest()[:16]

    def share(self, rank: int, world: int) -> ShardSource:
        """Shards ``[n * rank / world, n * (rank + 1) / world)``: contiguous, so rows stay in folder order."""
        total, first = len(self.shards), self._first
        return ShardSource(self.folder, first + total * rank // world, first + total * (rank + 1) // world)

    def _tables(self) -> Iterator[tuple[int, pa.Table]]:
        wanted = {s["file"] for s in self.shards}
        yield from enumerate(iter_shard_tables(self.folder, only=wanted))

    def all_paths(self) -> pa.Array:
        columns = [table.column("path").combine_chunks() for _, table in self._tables()]
        return pa.concat_arrays(columns) if columns else pa.array([], pa.string())

    def batches(self) -> Iterator[Batch]:
        for number, table in self._tables():
            column = table.column(FEATURE_COLUMN).combine_chunks()
            values = column.flatten().to_numpy(zero_copy_only=False)
            features = unit_rows(values.reshape(-1, column.type.list_size))
            yield Batch(table.column("path").to_pylist(), features, number, np.arange(len(features)))

    def shard_files(self) -> list[tuple[Path, PageMap]] | None:
        """Each shard file with its page map, or None (logged) if a shard cannot serve single rows."""
        found = []
        for shard in self.shards:
            path = self.folder / shard["file"]
            try:
                found.append((path, page_map(path)))
            except ShardLayoutError as error:
                _log.warning("%s: %s; the index stores its own copy of the vectors (shards written by this "
                             "version of `dinofeat embed` are read in place)", path, error)
                return None
        return found
