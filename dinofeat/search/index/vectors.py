"""The vectors of an index's rows, for exact search and re-ranking: stored in the index, or in the shards.

A part built from a shard folder whose shards store features plainly keeps no copy of the vectors:
``part-NAME.where.npz`` maps each row to its shard and row there (runs of consecutive rows) and
holds the shards' page maps (:mod:`dinofeat.features.stores.shard_pages`), so a candidate's exact
vector is ``dim * 4`` bytes read from a shard file at a known offset. Other parts store codes (``float32``
vectors in an exact index, or refine codes decoded by the index's codec).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dinofeat.features.stores.shard_pages import PageMap, ShardRowReader
from dinofeat.search.index.manifest import SHARDS, IndexCorruptError, Part
from dinofeat.search.index.rows import PartRows


def where_name(part: str) -> str:
    return f"part-{part}.where.npz"


def save_where(path: Path, runs: np.ndarray, maps: Sequence[PageMap]) -> None:
    """Write a part's row -> (shard, row) runs ``(part row, shard, shard row)`` and its shards' page maps."""
    def joined(arrays: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(arrays) if arrays else np.zeros(0, np.int64)

    np.savez(path, runs=runs.astype(np.int64).reshape(-1, 3),
             page_shard=joined([np.full(len(m.first_rows), i, np.int64) for i, m in enumerate(maps)]),
             page_first=joined([m.first_rows for m in maps]), page_offset=joined([m.offsets for m in maps]),
             shard_rows=np.asarray([m.rows for m in maps], np.int64))


def runs_of(rows: np.ndarray, shard: int, first: int) -> np.ndarray:
    """Runs ``(part row, shard, shard row)`` of ``rows`` (ascending rows of one shard), from part row
    ``first``."""
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.concatenate([[0], breaks]).astype(np.int64)
    return np.stack([first + starts, np.full(len(starts), shard), rows[starts]], axis=1)


class ShardVectors:
    """Exact vectors of a shard-backed part, read in place from its shards."""

    def __init__(self, directory: Path, part: Part, dim: int) -> None:
        assert part.shards is not None
        folder = Path(part.shards["folder"])
        files = [folder / name for name, _ in part.shards["files"]]
        for file, (_, size) in zip(files, part.shards["files"], strict=True):
            actual = file.stat().st_size if file.exists() else -1
            if actual != size:
                state = "is missing" if actual < 0 else f"has {actual} bytes, not {size}"
                raise IndexCorruptError(f"index {directory} reads its vectors from shard {file}, which "
                                        f"{state}: the shards must stay where the index was built from them")
        try:
            where = np.load(directory / where_name(part.name))
            self.runs = where["runs"]
            shard_of_page = where["page_shard"]
            maps = [PageMap(where["page_first"][shard_of_page == i], where["page_offset"][shard_of_page == i],
                            int(rows), dim) for i, rows in enumerate(where["shard_rows"])]
        except (OSError, ValueError, KeyError) as error:
            raise IndexCorruptError(f"index {directory}: {where_name(part.name)} cannot be read "
                                    f"({error})") from None
        self.reader = ShardRowReader(files, maps)

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Unit-norm vectors of part rows ``rows`` (shards hold the features as extracted)."""
        run = np.searchsorted(self.runs[:, 0], rows, side="right") - 1
        vectors = self.reader.read(self.runs[run, 1], self.runs[run, 2] + rows - self.runs[run, 0])
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors


class PartReader:
    """One part of an opened index: its paths, and its vectors (exact, or decoded refine codes)."""

    def __init__(self, directory: Path, part: Part, dim: int, codec: Any | None) -> None:
        self.part = part
        self.codec = codec
        self.shards = ShardVectors(directory, part, dim) if part.vectors == SHARDS else None
        codes: tuple[int, type] | None
        if self.shards is not None:
            codes = None
        elif codec is None:
            codes = (dim, np.float32)
        else:
            codes = (int(codec.sa_code_size()), np.uint8)
        self.rows = PartRows(directory, part.name, part.count, codes)

    @property
    def exact_vectors(self) -> bool:
        return self.codec is None or self.shards is not None

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """(n, dim) float32 vectors of part rows ``rows``."""
        if self.shards is not None:
            return self.shards.read(rows)
        assert self.rows.codes is not None
        codes = np.asarray(self.rows.codes[rows])
        return codes if self.codec is None else self.codec.sa_decode(codes)
