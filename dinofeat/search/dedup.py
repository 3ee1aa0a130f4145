"""Near-duplicate groups: connected components of the "cosine similarity >= threshold" graph."""

from __future__ import annotations

import faiss
import numpy as np
import torch


def _find(parent: list[int], item: int) -> int:
    while parent[item] != item:
        parent[item] = parent[parent[item]]
        item = parent[item]
    return item


def check_threshold(threshold: float) -> None:
    """ValueError unless ``threshold`` is a cosine similarity in (-1, 1]."""
    if not -1.0 < threshold <= 1.0:
        raise ValueError(f"threshold is a cosine similarity in (-1, 1], got {threshold}")


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
    parent = list(range(array.shape[0]))
    for row in range(array.shape[0]):
        for other in neighbours[limits[row]:limits[row + 1]].tolist():
            a, b = _find(parent, row), _find(parent, int(other))
            if a != b:
                parent[max(a, b)] = min(a, b)
    groups: dict[int, list[int]] = {}
    for item in range(array.shape[0]):
        groups.setdefault(_find(parent, item), []).append(item)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0])
