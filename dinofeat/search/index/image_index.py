"""A persistent, appendable image index: descriptors searchable by cosine similarity, with their paths.

Layout of an index folder (format ``dinofeat-index`` version 2, :mod:`.manifest`):

- ``manifest.json``: model, descriptor kind, dimension, rows, generation, the search method, and every
  file with its size and checksum (no list of paths);
- ``part-*.paths.parquet`` / ``part-*.codes`` / ``part-*.where.npz``: rows (paths, stored vectors or
  codes, or where in the shards the vectors are);
- ``lists-*.ivf`` / ``lists-*.ivfdata``, ``quantizer.faiss``, ``refine.faiss``: for a compressed index, the
  faiss inverted lists (on disk), the trained IVF stage and the codec of stored vectors.

Small collections are searched exactly; large ones through compressed codes re-ranked by exact
vectors (:mod:`.method`). Opening maps the files into memory instead of reading them. Writers
(:meth:`ImageIndex.extend`, :meth:`ImageIndex.add_shards`) hold the index's lock, write new files, and
commit by replacing the manifest, so concurrent writers lose nothing and a killed one leaves the
previous index intact. Indexes of the first format (version 1) open too, and are converted by the
next write.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from dinofeat.features.stores.shards import shard_manifest
from dinofeat.search.index.build import AddReport, add_rows
from dinofeat.search.index.legacy import LegacySearcher, read_legacy
from dinofeat.search.index.manifest import (
    LEGACY_VERSION,
    MANIFEST,
    IndexCorruptError,
    IndexMismatchError,
    Manifest,
    Method,
    manifest_version,
    read_manifest,
    verify_files,
)
from dinofeat.search.index.method import IndexOptions
from dinofeat.search.index.searcher import Searcher
from dinofeat.search.index.sources import ArraySource, ShardSource, unit_rows

#: Times a reader re-reads the manifest when a writer replaced its files while it was opening them.
READ_ATTEMPTS = 5


@dataclass(frozen=True)
class SearchHit:
    path: str
    score: float
    id: int = -1


def _as_array(features: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(features, torch.Tensor):
        return features.detach().float().cpu().numpy()
    return np.asarray(features, np.float32)


class ImageIndex:
    """Descriptors of a set of images, searchable by cosine similarity.

    Example:
        >>> index = ImageIndex.create("my_index", model="vit_s16", kind="cls", dim=384)  # doctest: +SKIP
        >>> index.add(["/data/a.jpg", "/data/b.jpg"], descriptors); index.save()  # doctest: +SKIP
        >>> ImageIndex.open("my_index", model="vit_s16").search(query, top=5)  # doctest: +SKIP
    """

    def __init__(self, directory: Path, model: str, kind: str, dim: int, options: IndexOptions | None = None,
                 searcher: Searcher | LegacySearcher | None = None, manifest: Manifest | None = None) -> None:
        self.directory = directory
        self.model, self.kind, self.dim = model, kind, dim
        self.options = options
        self.manifest = manifest
        self._searcher = searcher
        self._pending: list[tuple[list[str], np.ndarray]] = []
        #: Rows the last :meth:`save` added (queued rows already indexed are skipped).
        self.last_added = 0

    # Opening and creating

    @classmethod
    def create(cls, directory: str | os.PathLike[str], *, model: str, kind: str, dim: int,
               options: IndexOptions | None = None) -> ImageIndex:
        """A new, empty index (written by the first :meth:`save`); refuses to overwrite an index."""
        path = Path(directory)
        if (path / MANIFEST).exists():
            raise FileExistsError(f"{path} already holds an index; open it to add images")
        return cls(path, model, kind, dim, options)

    @classmethod
    def open(cls, directory: str | os.PathLike[str], *, model: str | None = None, kind: str | None = None
             ) -> ImageIndex:
        """Open an index (memory-mapped); ``model``/``kind``, when given, must equal what it was built with.

        Raises:
            FileNotFoundError: no index there.
            IndexMismatchError: another model or kind, or an inconsistent manifest.
            IndexCorruptError: a file is missing, truncated or unreadable (named).
        """
        path = Path(directory)
        for _ in range(READ_ATTEMPTS):
            index = cls._read(path)
            if index is not None:
                for field, wanted in (("model", model), ("kind", kind)):
                    if wanted is not None and getattr(index, field) != wanted:
                        raise IndexMismatchError(f"index {path} was built with {field} "
                                                 f"{getattr(index, field)!r}, but {wanted!r} was requested")
                return index
        raise IndexMismatchError(f"index {path} changed {READ_ATTEMPTS} times while it was being read; "
                                 "try again when its writers are done")

    @classmethod
    def _read(cls, path: Path) -> ImageIndex | None:
        """The index, or None when a writer replaced its generation while it was being opened."""
        if manifest_version(path) == LEGACY_VERSION:
            legacy = read_legacy(path)
            return cls(path, legacy.model, legacy.kind, legacy.dim, searcher=LegacySearcher(legacy))
        manifest = read_manifest(path)
        try:
            searcher = Searcher(path, manifest)
        except (IndexCorruptError, FileNotFoundError):
            try:
                if read_manifest(path).generation != manifest.generation:
                    return None
            except (FileNotFoundError, IndexMismatchError):
                pass
            raise
        return cls(path, manifest.model, manifest.kind, manifest.dim, searcher=searcher, manifest=manifest)

    @classmethod
    def open_or_create(cls, directory: str | os.PathLike[str], *, model: str, kind: str, dim: int,
                       options: IndexOptions | None = None) -> ImageIndex:
        """:meth:`open` the index in ``directory`` (checking model, kind and dimension), or :meth:`create`
        it."""
        if (Path(directory) / MANIFEST).exists():
            index = cls.open(directory, model=model, kind=kind)
            if index.dim != dim:
                raise IndexMismatchError(f"index {directory} holds {index.dim}-d descriptors, these are "
                                         f"{dim}-d")
            return index
        return cls.create(directory, model=model, kind=kind, dim=dim, options=options)

    # Writing

    @classmethod
    def extend(cls, directory: str | os.PathLike[str], files: Sequence[str], features: torch.Tensor, *,
               model: str, kind: str, options: IndexOptions | None = None) -> tuple[ImageIndex, int]:
        """Add ``files`` (absolute paths) with their descriptors to the index in ``directory``, safely
        against other processes extending it at the same time; files already indexed are skipped.

        Returns:
            The index as saved and the number of files this call added.
        """
        index = cls(Path(directory), model, kind, int(features.shape[1]), options)
        index.add(files, features)
        index.save()
        return index, index.last_added

    @classmethod
    def add_shards(cls, directory: str | os.PathLike[str], shards: str | os.PathLike[str], *,
                   options: IndexOptions | None = None, rank: int | None = None, world: int | None = None,
                   progress: bool = False) -> AddReport:
        """Add the CLS features of a ``dinofeat embed`` shard folder, streaming, without a model pass.

        Under ``torchrun`` (or ``RANK`` / ``WORLD_SIZE``) each process indexes its share of the shards and
        the last one merges and commits. Shards stored plainly are read in place for exact re-ranking
        instead of being copied into the index.
        """
        meta = shard_manifest(shards)
        return add_rows(directory, ShardSource(shards), model=meta["model"], kind=meta.get("kind", "cls"),
                        options=options, rank=rank, world=world, progress=progress)

    def add(self, files: Sequence[str], features: torch.Tensor | np.ndarray) -> None:
        """Queue descriptors of new absolute ``files`` (rows L2-normalised); :meth:`save` writes them."""
        array = _as_array(features)
        if array.ndim != 2 or array.shape != (len(files), self.dim):
            raise IndexMismatchError(f"expected features of shape ({len(files)}, {self.dim}) for this index, "
                                     f"got {tuple(array.shape)}")
        self._pending.append((list(files), array))

    def save(self) -> AddReport:
        """Write the queued rows (those not yet indexed) under the index's lock and reload the index."""
        files = [name for names, _ in self._pending for name in names]
        if not files:
            self.last_added = 0
            return AddReport(0, len(self), True)
        features = np.concatenate([array for _, array in self._pending])
        report = add_rows(self.directory, ArraySource(files, features), model=self.model, kind=self.kind,
                          options=self.options, rank=0, world=1)
        self._pending = []
        self.last_added = report.added
        fresh = ImageIndex.open(self.directory)
        self.manifest, self._searcher = fresh.manifest, fresh._searcher
        return report

    # Reading

    def __len__(self) -> int:
        if self._searcher is None:
            return 0
        return self.manifest.count if self.manifest is not None else len(self._legacy_files())

    def _legacy_files(self) -> list[str]:
        assert isinstance(self._searcher, LegacySearcher)
        return self._searcher.legacy.files

    @property
    def method(self) -> Method | None:
        """How the index searches (None for an empty or version-1 index)."""
        return self.manifest.method if self.manifest is not None else None

    @property
    def generation(self) -> int:
        return self.manifest.generation if self.manifest is not None else 0

    def paths(self, ids: Sequence[int] | np.ndarray) -> list[str]:
        """The paths of rows ``ids``."""
        if self._searcher is None:
            raise ValueError(f"index {self.directory} is empty")
        return self._searcher.paths(np.asarray(ids, np.int64))

    def vectors(self, ids: Sequence[int] | np.ndarray) -> torch.Tensor:
        """The descriptors of rows ``ids`` (exact, or decoded refine codes where the index stores those)."""
        if self._searcher is None:
            raise ValueError(f"index {self.directory} is empty")
        return torch.from_numpy(self._searcher.vectors(np.asarray(ids, np.int64)))

    @property
    def files(self) -> list[str]:
        """Every indexed path, in row order (reads the whole path table: large for a large index)."""
        return self.paths(np.arange(len(self))) if len(self) else []

    @property
    def features(self) -> torch.Tensor:
        """Every descriptor, in row order (reads them all: for small indexes)."""
        return self.vectors(np.arange(len(self))) if len(self) else torch.zeros(0, self.dim)

    def missing(self, files: Sequence[str | os.PathLike[str]]) -> list[str]:
        """The given files (as absolute paths) not yet in the index, in order, without repeats."""
        names = list(dict.fromkeys(os.path.abspath(f) for f in files))
        if not len(self) or not names:
            return names
        wanted = pa.array(names, pa.string())
        if isinstance(self._searcher, Searcher):
            found = {int(i) for part in self._searcher.parts for i in part.rows.find(wanted)}
        else:
            present = set(self._legacy_files())
            found = {i for i, name in enumerate(names) if name in present}
        return [name for i, name in enumerate(names) if i not in found]

    def search(self, queries: torch.Tensor | np.ndarray, top: int = 10, *, nprobe: int | None = None,
               candidates: int | None = None) -> list[list[SearchHit]]:
        """The ``top`` most similar indexed images of each query descriptor (best first).

        Args:
            queries: (n, dim) descriptors of the index's kind (normalised here).
            nprobe, candidates: Override the index's inverted lists visited and re-ranked codes per result.
        """
        if self._searcher is None or not len(self):
            raise ValueError(f"index {self.directory} is empty")
        array = _as_array(queries)
        if array.ndim != 2 or array.shape[1] != self.dim:
            raise IndexMismatchError(f"query descriptors have shape {tuple(array.shape)}; this index holds "
                                     f"{self.dim}-d {self.kind!r} descriptors of {self.model!r}")
        if top < 1:
            raise ValueError(f"top must be >= 1, got {top}")
        scores, ids = self._searcher.search(unit_rows(array), min(top, len(self)), nprobe, candidates)
        valid = ids >= 0
        paths = self._searcher.paths(ids[valid]) if valid.any() else []
        found = iter(paths)
        return [[SearchHit(next(found), float(s), int(i)) for s, i in zip(row_s, row_i, strict=True)
                 if i >= 0] for row_s, row_i in zip(scores.tolist(), ids.tolist(), strict=True)]

    def verify(self) -> None:
        """Check every file of the index against the size and checksum in its manifest.

        Raises:
            IndexCorruptError: naming the first file that does not match.
        """
        if self.manifest is not None:
            verify_files(self.directory, self.manifest.files())

    def lists(self) -> int:
        """Inverted lists of a compressed index (0 if exact)."""
        return self._searcher.ivf_lists() if isinstance(self._searcher, Searcher) else 0

    def near_pairs(self, ids: np.ndarray, threshold: float, nprobe: int) -> tuple[np.ndarray, np.ndarray,
                                                                                 np.ndarray]:
        """Pairs (i, j) with i in ``ids``, i < j, and exact cosine similarity >= ``threshold``, with it.

        Candidates come from a range search over ``nprobe`` inverted lists (all rows of an exact index);
        each is re-checked with exact vectors (:func:`dinofeat.search.dedup.index_duplicate_groups`).
        """
        if not isinstance(self._searcher, Searcher):
            raise ValueError(f"index {self.directory} is empty or in the version-1 format; extend it once "
                             "to convert it")
        return self._searcher.near_pairs(np.asarray(ids, np.int64), threshold, nprobe)
