"""Nearest-neighbour search on L2-normalised features with faiss (inner product = cosine)."""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np
import torch

#: Exact inner-product search; anything else is passed to ``faiss.index_factory``.
EXACT_INDEX = "Flat"
DEFAULT_QUERY_CHUNK = 8192


def l2_normalize(features: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit L2 norm (as ``nn.functional.normalize(x, dim=1)``), float32 on the CPU."""
    if features.ndim != 2:
        raise ValueError(f"features must be a 2-D (count, dim) matrix, got shape {tuple(features.shape)}")
    return torch.nn.functional.normalize(features.detach().float().cpu(), dim=1, p=2)


def as_float_tensor(features: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A float32 CPU tensor of features given as a tensor, an array or a (read-only) memory map (copied)."""
    if isinstance(features, torch.Tensor):
        return features.detach().float().cpu()
    return torch.from_numpy(np.array(features, dtype=np.float32))


def _as_faiss_array(features: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(features.detach().float().cpu().numpy(), dtype=np.float32)


def build_index(features: torch.Tensor, index_spec: str = EXACT_INDEX, search_params: str | None = None
                ) -> faiss.Index:
    """A faiss inner-product index holding ``features`` (rows should already be L2-normalised).

    Args:
        features: (count, dim) float matrix.
        index_spec: ``"Flat"`` for exact search (default), or any ``faiss.index_factory`` string for
            approximate search on large sets, e.g. ``"IVF4096,Flat"``, ``"HNSW32"``, ``"IVF1024,PQ64"``.
            Indexes that need training are trained on ``features``.
        search_params: ``faiss.ParameterSpace`` settings such as ``"nprobe=32"`` or ``"efSearch=128"``.

    Returns:
        The filled index (metric inner product).

    Example:
        >>> index = build_index(l2_normalize(torch.randn(100, 8)))
        >>> index.ntotal
        100
    """
    if features.ndim != 2 or features.shape[0] == 0:
        raise ValueError(f"need a non-empty (count, dim) feature matrix, got shape {tuple(features.shape)}")
    array = _as_faiss_array(features)
    dim = array.shape[1]
    try:
        index = faiss.index_factory(dim, index_spec, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as error:
        raise ValueError(f"invalid faiss index spec {index_spec!r}: {str(error).splitlines()[0]}") from None
    if not index.is_trained:
        index.train(array)
    index.add(array)
    if search_params:
        faiss.ParameterSpace().set_index_parameters(index, search_params)  # type: ignore[arg-type]
    return index


@dataclass(frozen=True)
class Neighbors:
    """Result of a k-NN search: (queries, k) similarities (descending) and indices into the index."""

    similarities: torch.Tensor
    indices: torch.Tensor


def search(index: faiss.Index, queries: torch.Tensor, k: int, chunk_size: int = DEFAULT_QUERY_CHUNK
           ) -> Neighbors:
    """The ``k`` most similar indexed rows of each query, searched in chunks of ``chunk_size`` queries.

    Chunking bounds the temporary memory (faiss' distance blocks and the float32 copy of a chunk),
    so millions of queries can be searched against a large index.

    Example:
        >>> feats = l2_normalize(torch.randn(50, 8))
        >>> found = search(build_index(feats), feats[:3], k=2)
        >>> found.indices[:, 0].tolist()
        [0, 1, 2]
    """
    if queries.ndim != 2:
        raise ValueError(f"queries must be a (count, dim) matrix, got shape {tuple(queries.shape)}")
    if queries.shape[1] != index.d:
        raise ValueError(f"query dimension {queries.shape[1]} does not match the index dimension {index.d}")
    if not 1 <= k <= index.ntotal:
        raise ValueError(f"k must be between 1 and the number of indexed items {index.ntotal}, got {k}")
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    sims, idx = [], []
    for start in range(0, queries.shape[0], chunk_size):
        chunk = _as_faiss_array(queries[start:start + chunk_size])
        distances, labels = index.search(chunk, k)
        sims.append(torch.from_numpy(distances))
        idx.append(torch.from_numpy(labels).long())
    if not sims:
        return Neighbors(torch.empty(0, k), torch.empty(0, k, dtype=torch.long))
    return Neighbors(torch.cat(sims), torch.cat(idx))
