"""A persistent, incremental image index: descriptors + faiss index + file list in one folder.

Layout of an index folder (format ``dinofeat-index`` version 1):

- ``manifest.json``: format, version, model, descriptor kind, dim, count, generation, files;
- ``features-<generation>.safetensors``: the (count, dim) L2-normalised descriptors;
- ``faiss-<generation>.index``: the faiss inner-product index over them.

Every save writes a new generation's data files, then atomically replaces the manifest (the
commit point), then deletes the previous generation: an interrupted save leaves the old index
intact. Opening validates the format, the model and descriptor kind (when given), the
dimension and the count of every part; any mismatch is an error naming both values.

Writers are serialised: :meth:`ImageIndex.extend` re-reads the index under a file lock
(:mod:`dinofeat.utils.locking`), adds what is still missing and saves, so several processes extending
one index at once lose nothing. Readers take no lock: one that finds its generation just replaced
by a writer reads the manifest again.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from dinofeat.search.neighbors import build_index, search
from dinofeat.utils.atomic_write import replace_atomically, write_text_atomically
from dinofeat.utils.locking import exclusive

_log = logging.getLogger(__name__)

INDEX_FORMAT = "dinofeat-index"
INDEX_VERSION = 1
MANIFEST = "manifest.json"
#: Times a reader re-reads the manifest when a writer replaced its generation while it was reading.
READ_ATTEMPTS = 5


class IndexMismatchError(ValueError):
    """The index on disk does not fit what was asked (model, descriptor, dimension) or is inconsistent."""


class _GenerationReplaced(Exception):
    """A writer committed a new generation while this reader was loading the previous one."""


def _manifest_generation(path: Path) -> int | None:
    try:
        return int(json.loads((path / MANIFEST).read_text())["generation"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


@dataclass(frozen=True)
class SearchHit:
    path: str
    score: float


class ImageIndex:
    """Descriptors of a set of images, searchable by cosine similarity.

    Example:
        >>> index = ImageIndex.create("my_index", model="vit_s16", kind="cls", dim=384)  # doctest: +SKIP
        >>> descriptors = torch.nn.functional.normalize(torch.randn(2, 384))  # doctest: +SKIP
        >>> index.add(["/data/a.jpg", "/data/b.jpg"], descriptors); index.save()  # doctest: +SKIP
        >>> ImageIndex.open("my_index", model="vit_s16").search(query, top=5)  # doctest: +SKIP
    """

    def __init__(self, directory: Path, model: str, kind: str, dim: int, files: list[str],
                 features: torch.Tensor, generation: int, faiss_index: faiss.Index | None = None) -> None:
        self.directory = directory
        self.model = model
        self.kind = kind
        self.dim = dim
        self.files = files
        self.features = features
        self.generation = generation
        if faiss_index is None and files:
            faiss_index = build_index(features)
        self._faiss = faiss_index

    def __len__(self) -> int:
        return len(self.files)

    @classmethod
    def create(cls, directory: str | os.PathLike[str], *, model: str, kind: str, dim: int) -> ImageIndex:
        """A new, empty index (written on the first :meth:`save`); refuses to overwrite an index."""
        path = Path(directory)
        if (path / MANIFEST).exists():
            raise FileExistsError(f"{path} already holds an index; open it to add images")
        return cls(path, model, kind, dim, [], torch.zeros(0, dim), generation=0)

    @classmethod
    def open(cls, directory: str | os.PathLike[str], *, model: str | None = None, kind: str | None = None
             ) -> ImageIndex:
        """Load and validate an index; ``model``/``kind``, when given, must equal what it was built with."""
        path = Path(directory)
        for _ in range(READ_ATTEMPTS):
            try:
                return cls._read(path, model, kind)
            except _GenerationReplaced:
                continue
        raise IndexMismatchError(f"index {path} changed {READ_ATTEMPTS} times while it was being read; "
                                 "try again when its writers are done")

    @classmethod
    def open_or_create(cls, directory: str | os.PathLike[str], *, model: str, kind: str, dim: int
                       ) -> ImageIndex:
        """:meth:`open` the index in ``directory`` (checking model and kind), or :meth:`create` it."""
        if (Path(directory) / MANIFEST).exists():
            return cls.open(directory, model=model, kind=kind)
        return cls.create(directory, model=model, kind=kind, dim=dim)

    @classmethod
    def extend(cls, directory: str | os.PathLike[str], files: Sequence[str], features: torch.Tensor, *,
               model: str, kind: str) -> tuple[ImageIndex, int]:
        """Add ``files`` (absolute paths) with their descriptors to the index in ``directory``, safely
        against other processes extending it at the same time.

        Under the index's lock: read the index as it is now, drop the files another process added
        meanwhile, add the rest, save. Creates the index if there is none.

        Returns:
            The saved index and the number of files this call added.
        """
        with exclusive(directory):
            index = cls.open_or_create(directory, model=model, kind=kind, dim=int(features.shape[1]))
            present = set(index.files)
            keep = [row for row, name in enumerate(files) if name not in present]
            if keep:
                index.add([files[row] for row in keep], features[keep])
                index.save()
            return index, len(keep)

    @classmethod
    def _read(cls, path: Path, model: str | None, kind: str | None) -> ImageIndex:
        if not (path / MANIFEST).is_file():
            raise FileNotFoundError(f"no dinofeat index in {path} (missing {MANIFEST})")
        try:
            meta: dict[str, Any] = json.loads((path / MANIFEST).read_text())
        except json.JSONDecodeError as error:
            raise IndexMismatchError(f"{path / MANIFEST} is not valid JSON: {error}") from None
        if meta.get("format") != INDEX_FORMAT or meta.get("version") != INDEX_VERSION:
            raise IndexMismatchError(f"{path}: unsupported index format {meta.get('format')!r} "
                                     f"version {meta.get('version')!r} "
                                     f"(expected {INDEX_FORMAT} {INDEX_VERSION})")
        for field, wanted in (("model", model), ("kind", kind)):
            if wanted is not None and meta[field] != wanted:
                raise IndexMismatchError(f"index {path} was built with {field} {meta[field]!r}, "
                                         f"but {wanted!r} was requested")
        try:
            generation, count, dim = int(meta["generation"]), int(meta["count"]), int(meta["dim"])
            files = list(meta["files"])
        except (KeyError, TypeError, ValueError) as error:
            raise IndexMismatchError(f"{path / MANIFEST} lacks or garbles a field: {error}") from None
        features_file = path / f"features-{generation}.safetensors"
        faiss_file = path / f"faiss-{generation}.index"
        try:
            features = load_file(str(features_file))["features"]
        except FileNotFoundError:
            if _manifest_generation(path) != generation:
                raise _GenerationReplaced from None
            raise IndexMismatchError(f"index {path} is incomplete: missing {features_file.name}") from None
        except (SafetensorError, KeyError) as error:
            raise IndexMismatchError(f"index {path} is damaged: {features_file.name} cannot be read "
                                     f"({error}); build it again with `dinofeat index`") from None
        try:
            index = faiss.read_index(str(faiss_file))
        except RuntimeError as error:
            if _manifest_generation(path) != generation:
                raise _GenerationReplaced from None
            # The faiss file only mirrors the features: rebuild it instead of failing.
            _log.warning("index %s: %s is unreadable (%s); rebuilt from %s", path, faiss_file.name,
                         str(error).splitlines()[-1], features_file.name)
            index = build_index(features)
        shapes = {"features": tuple(features.shape), "faiss": (index.ntotal, index.d),
                  "files": (len(files), dim)}
        if any(shape != (count, dim) for shape in shapes.values()):
            raise IndexMismatchError(f"index {path} is inconsistent: manifest says {count} x {dim}, "
                                     f"parts are {shapes}")
        return cls(path, meta["model"], meta["kind"], dim, files, features, generation, index)

    def missing(self, files: Sequence[str | os.PathLike[str]]) -> list[str]:
        """The given files (as absolute paths) not yet in the index, in order, without repeats."""
        present = set(self.files)
        new: list[str] = []
        for file in files:
            name = os.path.abspath(file)
            if name not in present:
                present.add(name)
                new.append(name)
        return new

    def add(self, files: Sequence[str], features: torch.Tensor) -> None:
        """Append descriptors (rows L2-normalised) of new absolute ``files``; call :meth:`save` to persist."""
        if features.ndim != 2 or features.shape != (len(files), self.dim):
            raise IndexMismatchError(f"expected features of shape ({len(files)}, {self.dim}) for this index, "
                                     f"got {tuple(features.shape)}")
        clash = set(files) & set(self.files)
        if clash:
            raise ValueError(f"already indexed: {sorted(clash)[:3]}")
        self.files = self.files + list(files)
        self.features = torch.cat([self.features, features.float().cpu()])
        if self._faiss is None:
            self._faiss = build_index(self.features)
        else:
            self._faiss.add(features.float().cpu().contiguous().numpy())

    def search(self, queries: torch.Tensor, top: int = 10) -> list[list[SearchHit]]:
        """The ``top`` most similar indexed images of each (L2-normalised) query descriptor."""
        if self._faiss is None:
            raise ValueError(f"index {self.directory} is empty")
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise IndexMismatchError(f"query descriptors have shape {tuple(queries.shape)}; this index holds "
                                     f"{self.dim}-d {self.kind!r} descriptors of {self.model!r}")
        found = search(self._faiss, queries, min(top, len(self)))
        return [[SearchHit(self.files[i], float(s)) for s, i in zip(sims.tolist(), idx.tolist(), strict=True)]
                for sims, idx in zip(found.similarities, found.indices, strict=True)]

    def save(self) -> None:
        """Write a new generation, commit it by replacing the manifest, then drop the old generation."""
        if self._faiss is None:
            raise ValueError("refusing to save an empty index")
        self.directory.mkdir(parents=True, exist_ok=True)
        old, new = self.generation, self.generation + 1
        features_file = self.directory / f"features-{new}.safetensors"
        features = self.features.contiguous()
        replace_atomically(lambda tmp: save_file({"features": features}, str(tmp)), features_file)
        faiss.write_index(self._faiss, str(self.directory / f"faiss-{new}.index"))
        manifest = {"format": INDEX_FORMAT, "version": INDEX_VERSION, "model": self.model, "kind": self.kind,
                    "dim": self.dim, "count": len(self.files), "generation": new, "files": self.files}
        write_text_atomically(self.directory / MANIFEST, json.dumps(manifest, indent=1))
        self.generation = new
        for stale in (f"features-{old}.safetensors", f"faiss-{old}.index"):
            (self.directory / stale).unlink(missing_ok=True)
