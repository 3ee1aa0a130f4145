"""The index folder's manifest: what the index holds, how it searches, and which files make it up.

Format ``dinofeat-index`` version 2. ``manifest.json`` is the commit point of every write: a writer
first writes new files under names no manifest refers to yet, then replaces the manifest atomically,
then deletes what the new manifest no longer lists. A reader that reads a manifest therefore always
finds every file it lists, complete (or a later manifest, when a writer merged parts meanwhile).

The manifest records every file's size and CRC-32: opening checks the sizes (a truncated or missing
part is an error naming it), :func:`verify_files` the checksums.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dinofeat.utils.atomic_write import write_text_atomically
from dinofeat.utils.errors import DinofeatError

INDEX_FORMAT = "dinofeat-index"
INDEX_VERSION = 2
#: The first format (one flat faiss file, a safetensors copy of the features, every path in the manifest).
LEGACY_VERSION = 1
MANIFEST = "manifest.json"
EXACT = "exact"
IVF = "ivf"
_CHUNK = 1 << 22


class IndexMismatchError(DinofeatError, ValueError):
    """The index on disk does not fit what was asked (model, descriptor, dimension) or is inconsistent."""


class IndexCorruptError(IndexMismatchError):
    """A file of the index is missing, truncated or damaged; the message names it."""


@dataclass(frozen=True)
class Method:
    """How the index searches.

    Attributes:
        type: ``"exact"`` (every stored vector is compared with the query) or ``"ivf"`` (candidates from
            faiss inverted lists of compressed codes, re-ranked with the stored refine codes).
        factory: The faiss factory string of the IVF stage (``"OPQ32_128,IVF4096,PQ32"``); None if exact.
        refine: The faiss factory string of the codec of the stored vectors (``"Flat"``: float32 copies,
            ``"SQfp16"``, ``"SQ8"``, ``"PQ96"``); ``"Flat"`` if exact.
        nprobe: Inverted lists visited per query.
        candidates: Candidates re-ranked per result (``candidates * top`` codes are decoded per query).
    """

    type: str
    factory: str | None = None
    refine: str = "Flat"
    nprobe: int = 0
    candidates: int = 0

    @property
    def exact(self) -> bool:
        return self.type == EXACT


STORED = "stored"
SHARDS = "shards"


@dataclass(frozen=True)
class Part:
    """Rows ``start .. start + count - 1`` of the index: their paths and where their vectors are.

    Attributes:
        files: The part's files in the index folder, name -> [size, crc32].
        vectors: ``"stored"`` (codes in the index) or ``"shards"`` (read in place from Parquet shards).
        shards: For ``"shards"``: the shard folder and its files used, name -> size.
    """

    name: str
    start: int
    count: int
    files: dict[str, list[int]] = field(default_factory=dict)
    vectors: str = STORED
    shards: dict[str, Any] | None = None

    @property
    def stop(self) -> int:
        return self.start + self.count


@dataclass(frozen=True)
class Lists:
    """One file of faiss inverted lists (header + data) holding ``count`` entries of any rows."""

    name: str
    count: int
    files: dict[str, list[int]] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    """Everything ``manifest.json`` says; ``trained`` lists the files all parts share (quantiser, codec)."""

    model: str
    kind: str
    dim: int
    count: int
    generation: int
    method: Method
    parts: tuple[Part, ...] = ()
    lists: tuple[Lists, ...] = ()
    trained: dict[str, list[int]] = field(default_factory=dict)

    def to_json(self) -> str:
        data = {"format": INDEX_FORMAT, "version": INDEX_VERSION, **asdict(self)}
        return json.dumps(data, indent=1)

    def files(self) -> dict[str, list[int]]:
        """Every file in the index folder the manifest refers to, with its [size, crc32]."""
        listed = dict(self.trained)
        for part in self.parts:
            listed.update(part.files)
        for lists in self.lists:
            listed.update(lists.files)
        return listed


def manifest_version(directory: Path) -> int | None:
    """The format version of the index in ``directory`` (None: no manifest, or not a dinofeat index)."""
    try:
        meta = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("format") != INDEX_FORMAT:
        return None
    version = meta.get("version")
    return version if isinstance(version, int) else None


def read_manifest(directory: Path) -> Manifest:
    """The manifest of the version-2 index in ``directory``.

    Raises:
        FileNotFoundError: no index there.
        IndexMismatchError: not valid JSON, another format or version, or a field missing or garbled.
    """
    path = directory / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no dinofeat index in {directory} (missing {MANIFEST})")
    try:
        meta: dict[str, Any] = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise IndexMismatchError(f"{path} is not valid JSON: {error}") from None
    if meta.get("format") != INDEX_FORMAT or meta.get("version") != INDEX_VERSION:
        raise IndexMismatchError(f"{directory}: unsupported index format {meta.get('format')!r} version "
                                 f"{meta.get('version')!r} (expected {INDEX_FORMAT} {INDEX_VERSION})")
    try:
        manifest = Manifest(
            model=str(meta["model"]), kind=str(meta["kind"]), dim=int(meta["dim"]), count=int(meta["count"]),
            generation=int(meta["generation"]), method=Method(**meta["method"]),
            parts=tuple(Part(str(p["name"]), int(p["start"]), int(p["count"]), _sizes(p["files"]),
                             str(p["vectors"]), p["shards"]) for p in meta["parts"]),
            lists=tuple(Lists(str(entry["name"]), int(entry["count"]), _sizes(entry["files"]))
                        for entry in meta["lists"]),
            trained=_sizes(meta["trained"]))
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as error:
        raise IndexMismatchError(f"{path} lacks or garbles a field: {error!r}") from None
    _check_consistent(path, manifest)
    return manifest


def _sizes(files: dict[str, Any]) -> dict[str, list[int]]:
    return {str(name): [int(size), int(crc)] for name, (size, crc) in files.items()}


def _check_consistent(path: Path, manifest: Manifest) -> None:
    start = 0
    for part in manifest.parts:
        if part.start != start or part.count <= 0:
            raise IndexMismatchError(f"{path} is inconsistent: part {part.name} holds rows {part.start}.."
                                     f"{part.stop - 1}, expected to start at {start}")
        start = part.stop
    listed = sum(entry.count for entry in manifest.lists)
    if start != manifest.count or (not manifest.method.exact and listed != manifest.count):
        raise IndexMismatchError(f"{path} is inconsistent: manifest says {manifest.count} rows, its parts "
                                 f"hold {start} and its inverted lists {listed}")


def write_manifest(directory: Path, manifest: Manifest) -> None:
    """Commit ``manifest``: replace ``manifest.json`` atomically."""
    write_text_atomically(directory / MANIFEST, manifest.to_json())


def describe_file(path: Path) -> list[int]:
    """[size in bytes, CRC-32] of a file just written, as the manifest records it."""
    crc = 0
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return [path.stat().st_size, crc]


def check_sizes(directory: Path, files: dict[str, list[int]]) -> None:
    """IndexCorruptError naming the first listed file that is missing or has another size."""
    for name, (size, _) in files.items():
        try:
            actual = (directory / name).stat().st_size
        except FileNotFoundError:
            raise IndexCorruptError(f"index {directory} is incomplete: {name} is missing") from None
        if actual != size:
            raise IndexCorruptError(f"index {directory} is damaged: {name} has {actual} bytes, the manifest "
                                    f"says {size} (truncated or overwritten); rebuild the index")


def verify_files(directory: Path, files: dict[str, list[int]]) -> None:
    """IndexCorruptError naming the first listed file whose size or CRC-32 differs from the manifest's."""
    check_sizes(directory, files)
    for name, (_, crc) in files.items():
        if describe_file(directory / name)[1] != crc:
            raise IndexCorruptError(f"index {directory} is damaged: {name} does not match its checksum "
                                    "(corrupt); rebuild the index")
