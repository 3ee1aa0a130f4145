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
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dinofeat.features.stores.shard_pages import (
    FEATURE_COLUMN,
    PageMap,
    ShardLayoutError,
    page_map,
    read_features,
)
from dinofeat.features.stores.shards import ShardError, shard_manifest, table_features

_log = logging.getLogger(__name__)
ARRAY_BATCH = 65536


@dataclass(frozen=True)
class Batch:
    """Rows of a source: paths, (n, dim) unit-norm float32 features, and for shard rows, where they are."""

    paths: list[str]
    features: np.ndarray
    shard: int = -1
    rows: np.ndarray | None = None


def unit_rows(features: np.ndarray, copy: bool = True) -> np.ndarray:
    """``features`` as float32 with rows scaled to unit L2 norm (zero rows stay zero); in place if
    ``copy`` is false and they are float32 already."""
    array = np.array(features, dtype=np.float32, copy=copy or None)
    norms = np.sqrt(np.einsum("ij,ij->i", array, array))  # no (n, dim) temporary, unlike np.linalg.norm
    array /= np.maximum(norms, 1e-12)[:, None]
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
        self._maps: dict[str, PageMap | str] = {}  # file -> page map, or why it has none

    def count(self) -> int:
        return sum(int(s["count"]) for s in self.shards)

    def identity(self) -> str:
        what = [str(self.folder), self.meta.get("plan"), [s["file"] for s in self.shards]]
        return hashlib.sha256(json.dumps(what).encode()).hexdigest()[:16]

    def share(self, rank: int, world: int) -> ShardSource:
        """Shards ``[n * rank / world, n * (rank + 1) / world)``: contiguous, so rows stay in folder order."""
        total, first = len(self.shards), self._first
        return ShardSource(self.folder, first + total * rank // world, first + total * (rank + 1) // world)

    def _pages(self, shard: dict[str, Any]) -> PageMap | None:
        """The shard's page map, or None if it cannot be read row by row (the reason is kept)."""
        name = shard["file"]
        if name not in self._maps:
            try:
                pages: PageMap | str = page_map(self.folder / name)
            except ShardLayoutError as error:
                pages = str(error)
            if isinstance(pages, PageMap) and pages.rows != shard["count"]:
                raise ShardError(f"shard {self.folder / name} holds {pages.rows} rows, the manifest says "
                                 f"{shard['count']}; extract it again")
            self._maps[name] = pages
        found = self._maps[name]
        return found if isinstance(found, PageMap) else None

    def all_paths(self) -> pa.Array:
        columns = [pq.read_table(self.folder / s["file"], columns=["path"]).column(0).combine_chunks()
                   for s in self.shards]
        return pa.concat_arrays(columns) if columns else pa.array([], pa.string())

    def batches(self) -> Iterator[Batch]:
        """One batch per shard, holding little more than the shard's features (see ``read_features``)."""
        for number, shard in enumerate(self.shards):
            path = self.folder / shard["file"]
            pages = self._pages(shard)
            if pages is not None:
                features = unit_rows(read_features(path, pages), copy=False)
                paths = pq.read_table(path, columns=["path"]).column(0).to_pylist()
            else:
                table = pq.read_table(path, columns=["path", FEATURE_COLUMN])
                decoded, paths = table_features(table)
                features = unit_rows(decoded.numpy(), copy=False)
                del table, decoded
            pa.default_memory_pool().release_unused()  # Arrow's allocator keeps freed memory otherwise
            batch = Batch(paths, features, number, np.arange(len(features)))
            del features, paths  # while the next shard is read, only the consumer holds this one
            yield batch
            del batch

    def shard_files(self) -> list[tuple[Path, PageMap]] | None:
        """Each shard file with its page map, or None (logged) if a shard cannot serve single rows."""
        maps = [(self.folder / s["file"], self._pages(s)) for s in self.shards]
        plain = [(path, pages) for path, pages in maps if pages is not None]
        if len(plain) < len(maps):
            path = next(path for path, pages in maps if pages is None)
            _log.warning("%d of the %d shards of %s cannot be read row by row (%s: %s); the index stores "
                         "its own copy of the vectors (shards written by this version of `dinofeat embed` "
                         "are read in place)", len(maps) - len(plain), len(maps), self.folder, path.name,
                         self._maps[path.name])
            return None
        return plain
