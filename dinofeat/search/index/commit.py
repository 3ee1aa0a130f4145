"""Committing a job's staged files into the index, merging parts, and removing what is no longer listed.

Runs under the index's lock. The new files are moved (renamed) into the index folder under names no
manifest lists yet, the staged inverted lists of all ranks are merged on disk into one lists file,
the tail of the index is compacted, then the manifest is replaced (the commit point) and only then
are the files it no longer lists deleted. A process killed anywhere before the manifest is replaced
leaves the previous index as it was; the files it left are deleted by the next commit.

Compaction keeps appends cheap and searches fast: the two newest lists files (or stored parts) are
merged while the older one is less than twice the newer one, so an index grown by many equal
appends has O(log n) lists files and every row is rewritten O(log n) times; an append of 10,000 rows
to a large index writes the new rows only.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from dinofeat.search.index.invlists import data_name, header_name, merge_on_disk, open_lists
from dinofeat.search.index.manifest import (
    EXACT,
    LEGACY_VERSION,
    MANIFEST,
    SHARDS,
    STORED,
    IndexCorruptError,
    IndexMismatchError,
    Lists,
    Manifest,
    Method,
    Part,
    describe_file,
    manifest_version,
    read_manifest,
    write_manifest,
)
from dinofeat.search.index.method import QUANTIZER_FILE, REFINE_FILE
from dinofeat.search.index.rows import PartRows, RowsWriter, codes_name, copy_rows, paths_name
from dinofeat.search.index.searcher import read_faiss
from dinofeat.search.index.vectors import where_name

_OWNED_PREFIXES = ("part-", "lists-", "features-", "faiss-")
#: The files of a part's rows, by where its vectors are.
_ROW_FILES = {STORED: (paths_name, codes_name), SHARDS: (paths_name, where_name)}


def current_manifest(folder: Path, *, model: str | None = None, kind: str | None = None,
                     dim: int | None = None) -> Manifest | None:
    """The committed manifest (None if there is no index yet), checked against what the caller holds.

    Raises:
        IndexMismatchError: the index was built with another model, kind or dimension, or it is in the
            version-1 format (convert it first), or its manifest is damaged.
    """
    version = manifest_version(folder)
    if version is None and not (folder / MANIFEST).exists():
        return None
    if version == LEGACY_VERSION:
        raise IndexMismatchError(f"{folder} holds a version-1 index; it is converted by the next "
                                 "`dinofeat index` run (or ImageIndex.extend)")
    manifest = read_manifest(folder)
    for field, wanted in (("model", model), ("kind", kind)):
        if wanted is not None and getattr(manifest, field) != wanted:
            raise IndexMismatchError(f"index {folder} was built with {field} {getattr(manifest, field)!r}, "
                                     f"but {wanted!r} was requested")
    if dim is not None and dim != manifest.dim:
        raise IndexMismatchError(f"index {folder} holds {manifest.dim}-d descriptors, these are {dim}-d")
    return manifest


def _adopt(folder: Path, job: Path, names: list[tuple[str, str]]) -> dict[str, list[int]]:
    """Move staged files (staged name -> final name) into the index; their [size, crc32] by final name.

    A staged file already gone was moved by an earlier attempt of this commit that was interrupted:
    only this job moves its staged files, so the file under the final name is that one.
    """
    files = {}
    for staged, final in names:
        if (job / staged).exists():
            (job / staged).replace(folder / final)
        elif not (folder / final).exists():
            raise IndexCorruptError(f"staged file {job / staged} is missing; run the job again")
        files[final] = describe_file(folder / final)
    return files


def commit(folder: Path, job: Path, info: dict[str, Any], world: int) -> Manifest | None:
    """Make the job's staged rows part of the index (see the module docstring); returns the new manifest."""
    dones = [json.loads((job / f"done-{rank:05d}.json").read_text()) for rank in range(world)]
    manifest = current_manifest(folder)
    if (manifest.generation if manifest else 0) != info["generation"]:
        raise IndexMismatchError(f"index {folder} was changed by another writer while this job ran; run it "
                                 "again (a job spread over several processes needs the index to itself)")
    if not sum(done["count"] for done in dones):
        shutil.rmtree(job, ignore_errors=True)
        return manifest
    generation = info["generation"] + 1
    method = Method(**info["method"])
    if manifest is not None:
        trained = manifest.trained
    else:  # a new index: its trained quantiser and codec, if compressed
        trained = {} if method.exact else _adopt(folder, job, [(QUANTIZER_FILE, QUANTIZER_FILE),
                                                                (REFINE_FILE, REFINE_FILE)])
    parts = list(manifest.parts) if manifest else []
    start = manifest.count if manifest else 0
    for rank, done in enumerate(dones):
        if done["count"]:
            name, prefix = f"{generation:06d}-{rank:05d}", f"rank{rank:05d}"
            files = _adopt(folder, job, [(f(prefix), f(name)) for f in _ROW_FILES[done["vectors"]]])
            parts.append(Part(name, start, done["count"], files, done["vectors"], done["shards"]))
            start += done["count"]
    lists = list(manifest.lists) if manifest else []
    if not method.exact:
        staged = [open_lists(job / name) for done in dones for name in done["lists"]]
        lists.append(_merge_lists(folder, staged, f"{generation:06d}"))
        del staged
    new = Manifest(info["model"], info["kind"], info["dim"], start, generation, method, tuple(parts),
                   tuple(lists), trained)
    new = compact(folder, new)
    write_manifest(folder, new)
    collect_garbage(folder, new)
    return new


def _merge_lists(folder: Path, inputs: list[Any], name: str) -> Lists:
    count = merge_on_disk(inputs, folder, name)
    files = {file: describe_file(folder / file) for file in (header_name(name), data_name(name))}
    return Lists(name, count, files)


def _codes_spec(folder: Path, manifest: Manifest) -> tuple[int, type]:
    """(width, dtype) of stored codes: float32 vectors if exact, else the refine codec's bytes."""
    if manifest.method.type == EXACT:
        return manifest.dim, np.float32
    return int(read_faiss(folder / REFINE_FILE).sa_code_size()), np.uint8


def compact(folder: Path, manifest: Manifest) -> Manifest:
    """Merge the newest lists files, and the newest stored parts, while the older is < 2x the newer."""
    lists, parts, step = list(manifest.lists), list(manifest.parts), 0
    while len(lists) >= 2 and lists[-2].count < 2 * lists[-1].count:
        inputs = [open_lists(folder / header_name(e.name), folder / data_name(e.name)) for e in lists[-2:]]
        merged = _merge_lists(folder, inputs, f"{manifest.generation:06d}-c{step}")
        lists[-2:] = [merged]
        step += 1
    while (len(parts) >= 2 and parts[-2].vectors == parts[-1].vectors == STORED
           and parts[-2].count < 2 * parts[-1].count):
        spec = _codes_spec(folder, manifest)
        name = f"{manifest.generation:06d}-c{step}"
        writer = RowsWriter(folder, name, codes=True)
        copy_rows([PartRows(folder, p.name, p.count, spec) for p in parts[-2:]], writer)
        writer.close()
        files = {f(name): describe_file(folder / f(name)) for f in (paths_name, codes_name)}
        parts[-2:] = [Part(name, parts[-2].start, parts[-2].count + parts[-1].count, files)]
        step += 1
    return replace(manifest, lists=tuple(lists), parts=tuple(parts))


def collect_garbage(folder: Path, manifest: Manifest) -> None:
    """Delete the index's files the manifest no longer lists, and every staging folder (all are stale now)."""
    keep = set(manifest.files())
    for path in folder.iterdir():
        if path.is_dir() and path.name.startswith(".staging-"):
            shutil.rmtree(path, ignore_errors=True)
        elif path.is_file() and path.name not in keep and (
                path.name.startswith(_OWNED_PREFIXES) or path.name in (QUANTIZER_FILE, REFINE_FILE)):
            path.unlink(missing_ok=True)

