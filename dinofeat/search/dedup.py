"""Near-duplicate groups: connected components of the "cosine similarity >= threshold" graph.

Two ways: :func:`duplicate_groups` compares all pairs of a feature matrix (a folder of photos);
:func:`index_duplicate_groups` works on an :class:`~dinofeat.search.index.ImageIndex` of any size:
each row's candidates come from a range search on the index (the rows of a few inverted lists),
every candidate pair is re-checked with exact vectors, and the pairs are joined into groups with a
union-find. Each row is compared with the rows of a few lists only (by default as many lists as hold
about :data:`DEDUP_CODES` rows, at least 2: near-duplicates share a cell or a neighbouring one), so the
work per row stays about the same as the index grows, instead of growing with the number of rows.
"""

from __future__ import annotations

import math

import faiss
import numpy as np
import torch
from tqdm.auto import tqdm

from dinofeat.search.index import ImageIndex

#: Rows of the inverted lists a row's duplicates are looked for in, by default.
DEDUP_CODES = 2048
DEDUP_CHUNK = 8192


def check_threshold(threshold: float) -> None:
    """ValueError unless ``threshold`` is a cosine similarity in (-1, 1]."""
    if not -1.0 < threshold <= 1.0:
        raise ValueError(f"threshold is a cosine similarity in (-1, 1], got {threshold}")


def groups_of_pairs(first: np.ndarray, second: np.ndarray) -> list[list[int]]:
    """Connected components (size >= 2) of the graph with edges ``first[i] -- second[i]``, each sorted,
    ordered by their first item.

    Example:
        >>> groups_of_pairs(np.array([0, 5, 2]), np.array([1, 6, 1]))
        [[0, 1, 2], [5, 6]]
    """
    items, inverse = np.unique(np.concatenate([first, second]), return_inverse=True)
    parent = list(range(len(items)))

    def find(item: int) -> int:
        while parent[item] != item:
            parent[item] = parent[parent[item]]
            item = parent[item]
        return item

    half = len(first)
    for a, b in zip(inverse[:half].tolist(), inverse[half:].tolist(), strict=True):
        root_a, root_b = find(a), find(b)
        if root_a != root_b:
            parent[max(root_a, root_b)] = min(root_a, root_b)
    groups: dict[int, list[int]] = {}
    for position, item in enumerate(items.tolist()):
        groups.setdefault(find(position), []).append(int(item))
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0])


def duplicate_groups(features: torch.Tensor, threshold: float) -> list[list[int]]:
    """Groups (size >= 2) of items linked by a chain of pairs with cosine similarity >= ``threshold``.

    Args:
        features: (n, dim) descriptors; L2-normalised here.
        threshold: Cosine similarity in (-1, 1]; e.g. 0.9 for near-identical copies with DINO CLS.

    Returns:
        Groups of row indices, each sorted, ordered by their first index.

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [0.99, 0.01], [0.0, 1.0]])
        >>> duplicate_groups(x, 0.95)
        [[0, 1]]
    """
    if features.ndim != 2 or features.shape[0] == 0:
        raise ValueError(f"need a non-empty (n, dim) feature matrix, got {tuple(features.shape)}")
    check_threshold(threshold)
    array = np.ascontiguousarray(torch.nn.functional.normalize(features.float().cpu(), dim=1).numpy())
    index = faiss.IndexFlatIP(array.shape[1])
    index.add(array)
    # range_search keeps similarities strictly above the radius; nudge it down for ">=".
    limits, _, neighbours = index.range_search(array, float(np.nextafter(np.float32(threshold), -np.inf)))
    first = np.repeat(np.arange(array.shape[0]), np.diff(limits).astype(np.int64))
    return groups_of_pairs(first, neighbours.astype(np.int64))


def dedup_nprobe(index: ImageIndex) -> int:
    """Lists to search per row: those holding about :data:`DEDUP_CODES` rows, at least 2."""
    lists = index.lists()
    return max(2, math.ceil(DEDUP_CODES * lists / max(len(index), 1))) if lists else 0


def index_duplicate_groups(index: ImageIndex, threshold: float, *, nprobe: int | None = None,
                           chunk: int = DEDUP_CHUNK, progress: bool = False) -> list[list[int]]:
    """Groups (size >= 2) of the index's rows linked by pairs with exact cosine similarity >= ``threshold``.

    Args:
        index: Any index (exact: all pairs are candidates; compressed: a range search, see the module
            docstring).
        nprobe: Inverted lists searched per row (default :func:`dedup_nprobe`).
        chunk: Rows searched at a time (bounds the memory of candidate pairs).

    Returns:
        Groups of row ids (see :meth:`ImageIndex.paths`), each sorted, ordered by their first id.
    """
    check_threshold(threshold)
    nprobe = nprobe or dedup_nprobe(index)
    firsts, seconds = [], []
    starts = range(0, len(index), chunk)
    for start in tqdm(starts, desc="near-duplicates", unit="chunk", disable=not progress):
        rows = np.arange(start, min(start + chunk, len(index)))
        first, second, _ = index.near_pairs(rows, threshold, nprobe)
        firsts.append(first)
        seconds.append(second)
    if not firsts:
        return []
    return groups_of_pairs(np.concatenate(firsts), np.concatenate(seconds))
