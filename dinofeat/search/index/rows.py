"""The rows of one part of an index: stored vectors (or their refine codes) and the image paths.

A part's rows are two files, both read without loading them:

- ``part-NAME.codes``: a raw row-major array, ``count x width`` (float32 vectors in an exact index,
  uint8 refine codes otherwise), memory-mapped;
- ``part-NAME.paths.parquet``: one column ``path``, in row groups of :data:`PATH_GROUP` rows, so the
  paths of the hits are read by decoding a few small row groups (and pandas, DuckDB or Spark read
  the table as is).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dinofeat.search.index.manifest import IndexCorruptError

#: Rows per Parquet row group of the path tables: small groups make reading one hit's path cheap.
PATH_GROUP = 1024
_SCHEMA = pa.schema([("path", pa.string())])


def codes_name(part: str) -> str:
    return f"part-{part}.codes"


def paths_name(part: str) -> str:
    return f"part-{part}.paths.parquet"


class RowsWriter:
    """Appends rows (paths, and codes unless the vectors stay in the shards) to a part's files."""

    def __init__(self, directory: Path, part: str, codes: bool = True) -> None:
        self.codes_path = directory / codes_name(part) if codes else None
        self.paths_path = directory / paths_name(part)
        self.count = 0
        self._codes = self.codes_path.open("wb") if self.codes_path else None
        self._paths = pq.ParquetWriter(self.paths_path, _SCHEMA, compression="zstd")

    def write(self, paths: Sequence[str], codes: np.ndarray | None) -> None:
        if codes is not None and len(paths) != codes.shape[0]:
            raise ValueError(f"{len(paths)} paths for {codes.shape[0]} rows of codes")
        if not len(paths):
            return
        if self._codes is not None:
            assert codes is not None
            self._codes.write(np.ascontiguousarray(codes).tobytes())
        self._paths.write_table(pa.table({"path": pa.array(list(paths), pa.string())}),
                                row_group_size=PATH_GROUP)
        self.count += len(paths)

    def close(self) -> None:
        if self._codes is not None:
            self._codes.close()
        self._paths.close()


class PartRows:
    """Random access to a part's stored codes and paths, by row number within the part."""

    def __init__(self, directory: Path, part: str, count: int, codes: tuple[int, type] | None) -> None:
        """``codes``: (width, dtype) of the stored codes, or None if the part stores none."""
        self.count = count
        self.codes: np.ndarray | None = None
        paths = directory / paths_name(part)
        if codes is not None:
            name = codes_name(part)
            try:
                self.codes = np.memmap(directory / name, dtype=codes[1], mode="r", shape=(count, codes[0]))
            except (OSError, ValueError) as error:
                raise IndexCorruptError(f"index {directory}: {name} cannot be read ({error})") from None
        try:
            self._table = pq.ParquetFile(paths)
        except (pa.ArrowException, OSError) as error:
            raise IndexCorruptError(f"index {directory}: {paths.name} cannot be read ({error})") from None
        groups = [self._table.metadata.row_group(g).num_rows for g in range(self._table.num_row_groups)]
        self._group_starts = np.cumsum([0, *groups])
        if self._group_starts[-1] != count or self._table.schema_arrow.names != ["path"]:
            raise IndexCorruptError(f"index {directory}: {paths.name} holds {self._group_starts[-1]} paths "
                                    f"(columns {self._table.schema_arrow.names}), the manifest says {count}")
        self._name = paths.name
        self._lock = threading.Lock()

    def paths(self, rows: np.ndarray) -> list[str]:
        """The paths of ``rows`` (row numbers within the part), in the given order."""
        groups = np.searchsorted(self._group_starts, rows, side="right") - 1
        found: dict[int, str] = {}
        for group in np.unique(groups).tolist():
            try:
                with self._lock:  # one reader of the file at a time (searches may come from several threads)
                    column = self._table.read_row_group(group, columns=["path"]).column(0)
            except (pa.ArrowException, OSError) as error:
                raise IndexCorruptError(f"{self._name}: row group {group} cannot be read ({error})") from None
            first = int(self._group_starts[group])
            for row in rows[groups == group].tolist():
                found[row] = column[row - first].as_py()
        return [found[row] for row in rows.tolist()]

    def path_tables(self) -> Iterator[pa.ChunkedArray]:
        """All paths, one row group at a time."""
        for group in range(self._table.num_row_groups):
            yield self._table.read_row_group(group, columns=["path"]).column(0)

    def find(self, wanted: pa.Array) -> np.ndarray:
        """Indices into ``wanted`` (a string array) of the paths this part holds."""
        hits = []
        for column in self.path_tables():
            where = pc.index_in(column, value_set=wanted).drop_null()
            hits.append(where.to_numpy(zero_copy_only=False))
        return np.concatenate(hits) if hits else np.zeros(0, np.int64)


def copy_rows(parts: Sequence[PartRows], writer: RowsWriter) -> None:
    """Append the rows of ``parts`` in order (a merge), one path row group at a time."""
    for part in parts:
        start = 0
        for column in part.path_tables():
            paths = column.to_pylist()
            codes = None if part.codes is None else np.asarray(part.codes[start:start + len(paths)])
            writer.write(paths, codes)
            start += len(paths)
