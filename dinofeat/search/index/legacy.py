"""Reading indexes of the first format (version 1), so that they keep opening and convert on the next write.

Version 1 kept every path in ``manifest.json``, a safetensors copy of the features
(``features-<generation>.safetensors``) and a flat faiss index that mirrored them
(``faiss-<generation>.index``). Only the paths and features are needed: they become the rows of a
version-2 index the first time the index is extended, which then deletes the old files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file

from dinofeat.search.index.manifest import MANIFEST, IndexCorruptError, IndexMismatchError


@dataclass(frozen=True)
class LegacyIndex:
    """The content of a version-1 index."""

    model: str
    kind: str
    dim: int
    generation: int
    files: list[str]
    features: np.ndarray


def read_legacy(directory: Path) -> LegacyIndex:
    """The paths and features of the version-1 index in ``directory``.

    Raises:
        IndexMismatchError: a field is missing, or the parts disagree on the number of rows.
        IndexCorruptError: the features file is missing or unreadable (named).
    """
    path = directory / MANIFEST
    try:
        meta: dict[str, Any] = json.loads(path.read_text())
        generation, count, dim = int(meta["generation"]), int(meta["count"]), int(meta["dim"])
        files, model, kind = [str(f) for f in meta["files"]], str(meta["model"]), str(meta["kind"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise IndexMismatchError(f"{path} (a version-1 index) lacks or garbles a field: {error!r}") from None
    features_file = directory / f"features-{generation}.safetensors"
    try:
        features = load_file(str(features_file))["features"]
    except (OSError, SafetensorError, KeyError) as error:
        raise IndexCorruptError(f"index {directory} is damaged: {features_file.name} cannot be read "
                                f"({error}); build it again with `dinofeat index`") from None
    if features.shape != (count, dim) or len(files) != count:
        raise IndexMismatchError(f"index {directory} is inconsistent: manifest says {count} x {dim}, "
                                 f"features are {features.shape}, {len(files)} files")
    return LegacyIndex(model, kind, dim, generation, files, features.astype(np.float32))


class LegacySearcher:
    """Exact search over a version-1 index held in memory (the interface of :class:`Searcher`)."""

    def __init__(self, legacy: LegacyIndex) -> None:
        self.legacy = legacy
        self.count = len(legacy.files)

    def search(self, queries: np.ndarray, top: int, nprobe: int | None = None, candidates: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        del nprobe, candidates
        scores, ids = faiss.knn(queries, self.legacy.features, top, metric=faiss.METRIC_INNER_PRODUCT)
        return scores, ids

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        return self.legacy.features[np.asarray(ids, np.int64)]

    def paths(self, ids: np.ndarray) -> list[str]:
        return [self.legacy.files[i] for i in np.asarray(ids, np.int64).tolist()]
