"""Reading single rows' features out of Parquet shards, without decoding whole shards.

Parquet is read a column chunk at a time; to fetch the features of a few hundred scattered rows (the
candidates a search re-ranks) this module maps where each row's floats lie in the shard file. When a
shard's ``cls`` column is stored plainly (uncompressed, no dictionary: what :func:`write_shard_table`
writes), every data page holds whole rows of ``dim`` little-endian float32 values after its level
bytes, so a row's features are ``dim * 4`` bytes at a computable offset. :func:`page_map` walks the
page headers once (a few bytes each, read with a minimal Thrift compact-protocol decoder) and
records, per page, its first row and where its values start; :class:`ShardRowReader` then reads rows
with one positioned read each.

Shards written otherwise (compressed or dictionary-encoded, by older versions or other tools) raise
:class:`ShardLayoutError` with the reason; callers then keep their own copy of the features.
"""

from __future__ import annotations

import os
import struct
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dinofeat.utils.errors import DinofeatError

FEATURE_COLUMN = "cls"
_HEADER_READ = 4096
_DATA_PAGE, _DICTIONARY_PAGE, _DATA_PAGE_V2 = 0, 2, 3
_PLAIN = 0


class ShardLayoutError(DinofeatError, ValueError):
    """A shard's feature column is not stored plainly, so its rows cannot be read one at a time."""


# Thrift compact protocol (the encoding of Parquet's page headers): just enough to read a struct.

def _varint(data: bytes, pos: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _zigzag(value: int) -> int:
    return (value >> 1) ^ -(value & 1)


def _value(data: bytes, pos: int, kind: int) -> tuple[Any, int]:
    if kind in (1, 2):  # booleans inside a struct carry their value in the type
        return kind == 1, pos
    if kind == 3:
        return data[pos], pos + 1
    if kind in (4, 5, 6):
        raw, pos = _varint(data, pos)
        return _zigzag(raw), pos
    if kind == 7:
        return struct.unpack_from("<d", data, pos)[0], pos + 8
    if kind == 8:
        size, pos = _varint(data, pos)
        return bytes(data[pos:pos + size]), pos + size
    if kind in (9, 10):  # list, set
        head = data[pos]
        pos += 1
        size, element = head >> 4, head & 0x0F
        if size == 15:
            size, pos = _varint(data, pos)
        items = []
        for _ in range(size):
            if element in (1, 2):  # booleans in a list take one byte each
                item, pos = data[pos] == 1, pos + 1
            else:
                item, pos = _value(data, pos, element)
            items.append(item)
        return items, pos
    if kind == 11:  # map
        size, pos = _varint(data, pos)
        if not size:
            return {}, pos
        types = data[pos]
        pos += 1
        entries = {}
        for _ in range(size):
            key, pos = _value(data, pos, types >> 4)
            entries[key], pos = _value(data, pos, types & 0x0F)
        return entries, pos
    if kind == 12:
        return _struct(data, pos)
    raise ValueError(f"unknown Thrift compact type {kind}")


def _struct(data: bytes, pos: int) -> tuple[dict[int, Any], int]:
    """A Thrift struct as {field id: value}, and the position after it."""
    fields: dict[int, Any] = {}
    last = 0
    while True:
        head = data[pos]
        pos += 1
        if head == 0:
            return fields, pos
        delta, kind = head >> 4, head & 0x0F
        if delta:
            field = last + delta
        else:
            raw, pos = _varint(data, pos)
            field = _zigzag(raw)
        fields[field], pos = _value(data, pos, kind)
        last = field


@dataclass(frozen=True)
class PageMap:
    """Where the features of a shard's rows are: per data page, its first row and its values' offset."""

    first_rows: np.ndarray
    offsets: np.ndarray
    rows: int
    dim: int


def _read_header(handle: Any, offset: int) -> tuple[dict[int, Any], int]:
    size = _HEADER_READ
    while True:
        handle.seek(offset)
        data = handle.read(size)
        try:
            header, end = _struct(data, 0)
            return header, offset + end
        except IndexError:
            if len(data) < size:
                raise
            size *= 4


def _page_rows(header: dict[int, Any], body: int, handle: Any, dim: int) -> tuple[int, int]:
    """(rows, offset of the first value) of a plain data page, or ShardLayoutError."""
    if header[1] == _DATA_PAGE_V2:
        page = header[8]
        if page[4] != _PLAIN:
            raise ShardLayoutError("a data page is dictionary-encoded")
        start, count = body + page[5] + page[6], page[1]
        rows = page[3]
    elif header[1] == _DATA_PAGE:
        page = header[5]
        if page[2] != _PLAIN:
            raise ShardLayoutError("a data page is dictionary-encoded")
        handle.seek(body)
        repetition = struct.unpack("<i", handle.read(4))[0]
        handle.seek(body + 4 + repetition)
        definition = struct.unpack("<i", handle.read(4))[0]
        start, count = body + 8 + repetition + definition, page[1]
        rows = count // dim
    else:
        raise ShardLayoutError(f"page type {header[1]} (a dictionary page: dictionary-encoded values)")
    if count % dim or rows * dim != count or body + header[3] - start != count * 4:
        raise ShardLayoutError("a data page holds null or partial rows")
    return rows, start


def page_map(path: str | Path, column: str = FEATURE_COLUMN) -> PageMap:
    """The page map of ``column`` (a fixed-size list of float32) in the Parquet file ``path``.

    Raises:
        ShardLayoutError: the column is compressed, dictionary-encoded, or has null rows (the reason).
        OSError, pyarrow.ArrowException: the file is unreadable.
    """
    file = pq.ParquetFile(path)
    field = file.schema_arrow.field(column)
    if not pa.types.is_fixed_size_list(field.type) or not pa.types.is_float32(field.type.value_type):
        raise ShardLayoutError(f"column {column!r} is {field.type}, not a fixed-size list of float32")
    dim = field.type.list_size
    leaf = next(i for i in range(file.metadata.num_columns)
                if file.metadata.schema.column(i).path.split(".")[0] == column)
    first_rows: list[int] = []
    offsets: list[int] = []
    row = 0
    with open(path, "rb") as handle:
        for group in range(file.metadata.num_row_groups):
            chunk = file.metadata.row_group(group).column(leaf)
            if chunk.compression != "UNCOMPRESSED" or chunk.has_dictionary_page:
                raise ShardLayoutError(f"column {column!r} is stored {chunk.compression.lower()}"
                                       f"{' with a dictionary' if chunk.has_dictionary_page else ''}")
            position, end = chunk.data_page_offset, chunk.data_page_offset + chunk.total_compressed_size
            while position < end:
                header, body = _read_header(handle, position)
                rows, start = _page_rows(header, body, handle, dim)
                first_rows.append(row)
                offsets.append(start)
                row += rows
                position = body + header[3]
            if row != sum(file.metadata.row_group(g).num_rows for g in range(group + 1)):
                raise ShardLayoutError(f"the pages of column {column!r} hold {row} rows, not the row groups'")
    return PageMap(np.asarray(first_rows, np.int64), np.asarray(offsets, np.int64), row, dim)


def read_features(path: str | Path, pages: PageMap) -> np.ndarray:
    """All (rows, dim) float32 features of a plain shard, read page by page straight into one array.

    Unlike decoding the Parquet column (levels, validity, list offsets: about 5x the features in memory),
    this holds nothing but the result.
    """
    out = np.empty((pages.rows, pages.dim), np.float32)
    stops = [*pages.first_rows[1:].tolist(), pages.rows]
    with open(path, "rb") as handle:
        for first, stop, offset in zip(pages.first_rows.tolist(), stops, pages.offsets.tolist(), strict=True):
            handle.seek(offset)
            values = np.fromfile(handle, dtype="<f4", count=(stop - first) * pages.dim)  # one page
            if len(values) != (stop - first) * pages.dim:
                raise ShardLayoutError(f"{path} ends inside a data page")
            out[first:stop] = values.reshape(-1, pages.dim)
    return out


class ShardRowReader:
    """The features of chosen rows of several shards, each row one positioned read (``os.pread``).

    Reads leave no mapping behind (the process's resident memory does not grow with the rows read) and at
    most ``open_files`` shard files are open at a time, however many shards there are.
    """

    def __init__(self, files: Sequence[Path], maps: Sequence[PageMap], open_files: int = 64) -> None:
        if len(files) != len(maps) or len({m.dim for m in maps}) > 1:
            raise ValueError("one page map per shard, all of one dimension")
        self.files = list(files)
        self.maps = list(maps)
        self.dim = maps[0].dim if maps else 0
        self._open: OrderedDict[int, int] = OrderedDict()
        self._limit = open_files
        self._lock = threading.Lock()  # searches from several threads share the open files

    def _descriptor(self, shard: int) -> int:
        if shard in self._open:
            self._open.move_to_end(shard)
            return self._open[shard]
        if len(self._open) >= self._limit:
            os.close(self._open.popitem(last=False)[1])
        self._open[shard] = os.open(self.files[shard], os.O_RDONLY)
        return self._open[shard]

    def read(self, shards: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """(n, dim) float32 features of row ``rows[i]`` of shard ``shards[i]``, in the given order."""
        out = np.empty((len(rows), self.dim), np.float32)
        width = self.dim * 4
        with self._lock:
            self._read_into(out, shards, rows, width)
        return out

    def _read_into(self, out: np.ndarray, shards: np.ndarray, rows: np.ndarray, width: int) -> None:
        for shard in np.unique(shards).tolist():
            where = np.flatnonzero(shards == shard)
            pages = self.maps[shard]
            wanted = rows[where]
            page = np.searchsorted(pages.first_rows, wanted, side="right") - 1
            starts = pages.offsets[page] + (wanted - pages.first_rows[page]) * width
            descriptor = self._descriptor(shard)
            for slot, start in zip(where.tolist(), starts.tolist(), strict=True):
                raw = os.pread(descriptor, width, start)
                if len(raw) != width:
                    raise ShardLayoutError(f"{self.files[shard]} is shorter than its pages say (truncated?)")
                out[slot] = np.frombuffer(raw, "<f4")

    def close(self) -> None:
        while self._open:
            os.close(self._open.popitem()[1])

    def __del__(self) -> None:
        self.close()
