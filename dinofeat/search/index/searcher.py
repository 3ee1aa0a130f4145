"""Searching an opened index: exact over stored vectors, or IVF candidates re-ranked by exact vectors.

Everything is memory-mapped: opening reads the manifest, the quantiser and the small headers; the
inverted lists, stored codes and shards are paged in by the queries that touch them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import faiss
import numpy as np

from dinofeat.search.index.invlists import attach, data_name, header_name, open_lists, stack
from dinofeat.search.index.manifest import IndexCorruptError, Manifest, check_sizes
from dinofeat.search.index.method import QUANTIZER_FILE, REFINE_FILE
from dinofeat.search.index.vectors import PartReader

_PAIR_BLOCK = 65536
#: faiss' type stubs lack parts of the API used here (search parameters, transform chains).
_faiss: Any = faiss


def read_faiss(path: Path) -> Any:
    try:
        return faiss.read_index(str(path))
    except RuntimeError as error:
        raise IndexCorruptError(f"{path} cannot be read by faiss ({str(error).splitlines()[-1]})") from None


def best(scores: np.ndarray, ids: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the ``top`` highest scores (ties: lower id first); missing ids (-1) come last."""
    scores = np.where(ids < 0, -np.inf, scores)
    order = np.lexsort((ids, -scores), axis=1)[:, :top]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)


class Searcher:
    """The search structures of one manifest (one generation) of an index."""

    def __init__(self, directory: Path, manifest: Manifest) -> None:
        self.directory = directory
        self.manifest = manifest
        check_sizes(directory, manifest.files())
        exact = manifest.method.exact
        self.codec = None if exact else read_faiss(directory / REFINE_FILE)
        self.parts = [PartReader(directory, part, manifest.dim, self.codec) for part in manifest.parts]
        self.starts = np.array([part.start for part in manifest.parts], np.int64)
        self.ivf: Any = None
        self._code_error: float | None = None
        if not exact:
            lists = [open_lists(directory / header_name(entry.name), directory / data_name(entry.name))
                     for entry in manifest.lists]
            self.ivf = attach(read_faiss(directory / QUANTIZER_FILE), stack(lists), manifest.count,
                              manifest.method.nprobe)

    def _locate(self, ids: np.ndarray) -> np.ndarray:
        bad = ids[(ids < 0) | (ids >= self.manifest.count)]
        if bad.size:
            raise IndexCorruptError(f"index {self.directory}: its inverted lists name row {int(bad[0])}, "
                                    f"outside its {self.manifest.count} rows (a damaged lists file)")
        return np.searchsorted(self.starts, ids, side="right") - 1

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """(n, dim) float32 vectors of rows ``ids`` (exact, or decoded refine codes where stored so)."""
        ids = np.asarray(ids, np.int64)
        part_of = self._locate(ids)
        out = np.empty((len(ids), self.manifest.dim), np.float32)
        for number in np.unique(part_of).tolist():
            mask = part_of == number
            out[mask] = self.parts[number].vectors(ids[mask] - self.starts[number])
        return out

    def paths(self, ids: np.ndarray) -> list[str]:
        ids = np.asarray(ids, np.int64)
        part_of = self._locate(ids)
        found = [""] * len(ids)
        for number in np.unique(part_of).tolist():
            where = np.flatnonzero(part_of == number)
            for slot, path in zip(where, self.parts[number].rows.paths(ids[where] - self.starts[number]),
                                  strict=True):
                found[slot] = path
        return found

    def search(self, queries: np.ndarray, top: int, nprobe: int | None = None, candidates: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, ids), each (queries, top): the cosine similarity of the ``top`` nearest rows of
        each unit-norm query, best first; ids -1 (similarity -inf) where fewer rows exist."""
        queries = np.ascontiguousarray(queries, np.float32)
        if self.ivf is None:
            return self._exact(queries, top)
        method = self.manifest.method
        wanted = min(top * (candidates or method.candidates), self.manifest.count)
        _, ids = self.ivf.search(queries, wanted, params=self._params(nprobe or method.nprobe))
        return self.rerank(queries, ids, top)

    def ivf_lists(self) -> int:
        return 0 if self.ivf is None else int(faiss.extract_index_ivf(self.ivf).nlist)

    def _params(self, nprobe: int) -> Any:
        params = _faiss.SearchParametersIVF()
        params.nprobe = min(nprobe, self.ivf_lists())
        return params

    def rerank(self, queries: np.ndarray, ids: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``top`` of candidate ``ids`` (per query, -1 = none) by exact similarity to the query."""
        valid = ids >= 0
        unique, inverse = np.unique(ids[valid], return_inverse=True)
        vectors = self.vectors(unique)
        scores = np.full(ids.shape, -np.inf, np.float32)
        rows = np.nonzero(valid)[0]
        scores[valid] = np.einsum("nd,nd->n", queries[rows], vectors[inverse])
        return best(scores, ids, top)

    def near_pairs(self, ids: np.ndarray, threshold: float, nprobe: int) -> tuple[np.ndarray, np.ndarray,
                                                                                 np.ndarray]:
        """Pairs (i, j), i in ``ids`` and i < j, of rows with exact cosine similarity >= ``threshold``.

        Candidates come from a range search (all rows for an exact index; the IVF codes of ``nprobe``
        lists otherwise, the squared radius widened by the codes' squared error, so that pairs are not
        missed for want of precision); every candidate is then re-checked with exact vectors.

        Returns:
            (i, j, similarity) arrays.
        """
        queries = self.vectors(ids)
        if self.ivf is None:
            lims, found = self._exact_range(queries, threshold)
        else:
            radius = max(2.0 - 2.0 * threshold, 0.0) + self.code_error() ** 2
            lims, _, found = self.ivf.range_search(queries, float(radius), params=self._params(nprobe))
        rows = np.repeat(np.arange(len(ids)), np.diff(lims).astype(np.int64))
        keep = found > ids[rows]
        rows, second = rows[keep], found[keep]
        unique, inverse = np.unique(second, return_inverse=True)
        vectors = self.vectors(unique)
        similarity = np.empty(len(rows), np.float32)
        for start in range(0, len(rows), _PAIR_BLOCK):  # bounded memory, however many candidates
            block = slice(start, start + _PAIR_BLOCK)
            similarity[block] = np.einsum("nd,nd->n", queries[rows[block]], vectors[inverse[block]])
        close = similarity >= threshold
        return ids[rows[close]], second[close], similarity[close]

    def code_error(self) -> float:
        """The 99.9th percentile of the IVF codes' reconstruction error (L2, in the space searched)."""
        if self._code_error is None:
            sample = self.vectors(np.linspace(0, self.manifest.count - 1, min(self.manifest.count, 2000))
                                  .astype(np.int64))
            index = _faiss.downcast_index(self.ivf)
            if isinstance(index, faiss.IndexPreTransform):
                chain: Any = index.chain
                for step in range(chain.size()):
                    sample = _faiss.downcast_VectorTransform(chain.at(step)).apply(sample)
            ivf = faiss.extract_index_ivf(index)
            decoded = ivf.sa_decode(ivf.sa_encode(np.ascontiguousarray(sample, np.float32)))
            self._code_error = float(np.quantile(np.linalg.norm(sample - decoded, axis=1), 0.999))
        return self._code_error

    def _exact_range(self, queries: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        found, counts = [], np.zeros(len(queries), np.int64)
        radius = float(np.nextafter(np.float32(threshold), -np.inf))  # range_search keeps scores > radius
        per_query: list[list[np.ndarray]] = [[] for _ in range(len(queries))]
        for start, part in zip(self.starts.tolist(), self.parts, strict=True):
            flat = faiss.IndexFlatIP(self.manifest.dim)
            flat.add(np.asarray(part.rows.codes))
            lims, _, ids = flat.range_search(queries, radius)
            for query in range(len(queries)):
                per_query[query].append(ids[lims[query]:lims[query + 1]] + start)
        for query, chunks in enumerate(per_query):
            joined = np.concatenate(chunks)
            counts[query] = len(joined)
            found.append(joined)
        return np.concatenate([[0], np.cumsum(counts)]), np.concatenate(found)

    def _exact(self, queries: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
        found_scores, found_ids = [], []
        for start, part in zip(self.starts.tolist(), self.parts, strict=True):
            vectors = part.rows.codes
            assert vectors is not None
            k = min(top, part.part.count)
            scores, ids = faiss.knn(queries, np.asarray(vectors), k, metric=faiss.METRIC_INNER_PRODUCT)
            found_scores.append(scores)
            found_ids.append(np.where(ids >= 0, ids + start, -1))
        scores, ids = best(np.concatenate(found_scores, 1), np.concatenate(found_ids, 1), top)
        if ids.shape[1] < top:  # fewer rows than asked
            pad = top - ids.shape[1]
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        return scores, ids
