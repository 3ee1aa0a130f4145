"""faiss inverted lists on disk: built in memory a batch at a time, merged on disk, read memory-mapped.

A builder adds vectors to an empty trained IVF index, whose inverted lists (codes and ids) grow in
memory; when they reach the memory cap (or the input ends) they are written to a *staged* file in
faiss' own format. The staged files of every process are then merged on disk by faiss'
``OnDiskInvertedLists.merge_from_multiple`` into one data file laid out list after list, plus a small
header (faiss' ``ilod`` record: list sizes and offsets). Searching opens both memory-mapped and
stacks the lists of every part (``HStackInvertedLists``): list ``i`` of the stack is list ``i`` of
each lists file in turn, so an index grown by appends is searched as one.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import faiss

from dinofeat.search.index.manifest import IndexCorruptError

#: faiss' type stubs lack the inverted-lists classes used here (on disk, stacked, pointer vectors).
_faiss: Any = faiss


def header_name(name: str) -> str:
    return f"lists-{name}.ivf"


def data_name(name: str) -> str:
    return f"lists-{name}.ivfdata"


def staged_name(name: str) -> str:
    return f"lists-{name}.staged"


def ivf_of(index: faiss.Index) -> Any:
    """The IVF layer of an index (inside an OPQ / PCA pre-transform, if any)."""
    return faiss.extract_index_ivf(index)


@contextlib.contextmanager
def _quiet_native_stdout() -> Iterator[None]:
    """Silence what faiss' C++ code prints on stdout (``OnDiskInvertedLists`` says "resizing ... bytes")."""
    sys.stdout.flush()
    saved = os.dup(1)
    sink = os.open(os.devnull, os.O_WRONLY)
    os.dup2(sink, 1)
    try:
        yield
    finally:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).fflush(None)
        os.dup2(saved, 1)
        os.close(saved)
        os.close(sink)


def write_staged(index: faiss.Index, path: Path) -> None:
    """Write the in-memory inverted lists of ``index`` to ``path`` (faiss' array format), then empty them."""
    ivf = ivf_of(index)
    writer = faiss.FileIOWriter(str(path))
    try:
        faiss.write_InvertedLists(ivf.invlists, writer)
    finally:
        del writer  # closes the file
    fresh = _faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    ivf.replace_invlists(fresh, True)  # frees the written lists (reset() would keep their memory)
    fresh.this.disown()
    ivf.ntotal = index.ntotal = 0


def merge_on_disk(inputs: Sequence[Any], directory: Path, name: str) -> int:
    """Merge opened inverted lists, in order, into the data file and header ``name`` in ``directory``.

    Args:
        inputs: Inverted lists (:func:`open_lists`), all with the same lists and code size, whose ids are
            global row numbers (each input's rows after the previous input's: ids stay ascending in
            every list).

    Returns:
        The number of entries merged.
    """
    first = inputs[0]
    data = (directory / data_name(name)).absolute()
    merged = _faiss.OnDiskInvertedLists(first.nlist, first.code_size, str(data))
    pointers = _faiss.InvertedListsPtrVector()
    for lists in inputs:
        pointers.push_back(lists)
    with _quiet_native_stdout():
        count = int(merged.merge_from_multiple(pointers.data(), pointers.size(), False, False))
    writer = faiss.FileIOWriter(str(directory / header_name(name)))
    try:
        faiss.write_InvertedLists(merged, writer)
    finally:
        del writer
    return count


def open_lists(header: Path, data: Path | None = None) -> Any:
    """The inverted lists in ``header`` (staged, or a merged header whose data file is ``data``), mapped
    read-only into memory.

    Raises:
        IndexCorruptError: a file is unreadable, or the data file is shorter than its header says.
    """
    flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY
    try:
        reader = faiss.FileIOReader(str(header))
        try:
            lists = _faiss.read_InvertedLists(reader, flags)
        finally:
            del reader
    except RuntimeError as error:
        raise IndexCorruptError(f"{header} cannot be read as faiss inverted lists "
                                f"({str(error).splitlines()[-1]})") from None
    if lists.filename:  # a merged header: map its data file, found beside it (the index may have moved)
        target = data or header.with_suffix(".ivfdata")
        size = target.stat().st_size if target.exists() else -1
        if size != lists.totsize:
            raise IndexCorruptError(f"{target} holds {max(size, 0)} bytes, its header {header.name} says "
                                    f"{lists.totsize}: the file is missing or truncated")
        lists.filename = str(target)
        lists.read_only = True
        lists.do_mmap()
    lists.prefetch_nthread = 0  # the lists are in the page cache or read on demand; no threads per query
    return lists


def stack(lists: Sequence[Any]) -> Any:
    """One inverted-lists object over several parts' (list ``i`` = list ``i`` of each part, in order)."""
    if len(lists) == 1:
        return lists[0]
    pointers = _faiss.InvertedListsPtrVector()
    for part in lists:
        pointers.push_back(part)
    stacked = _faiss.HStackInvertedLists(pointers.size(), pointers.data())
    stacked.referenced_objects = [list(lists), pointers]
    return stacked


def attach(index: Any, lists: Any, count: int, nprobe: int) -> Any:
    """``index`` (trained, empty) searching ``lists`` holding ``count`` entries, visiting ``nprobe`` lists."""
    ivf = ivf_of(index)
    # One file's lists (faiss objects Python cannot free) go with the index: unmapped when it is deleted.
    # A stack belongs to Python; the lists under it stay mapped for the life of the process.
    ivf.replace_invlists(lists, not isinstance(lists, faiss.HStackInvertedLists))
    index.referenced_objects = [lists]
    ivf.ntotal = index.ntotal = count
    ivf.nprobe = min(nprobe, ivf.nlist)
    return index
