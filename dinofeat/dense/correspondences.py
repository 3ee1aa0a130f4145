"""Correspondences between two images: mutual nearest neighbours ("best buddies") of patch tokens.

Patch i of A and patch j of B are best buddies when j is i's most similar patch in B and i is j's
most similar patch in A (cosine similarity), as in dino-vit-features' correspondences.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Matches:
    """Best-buddy pairs, strongest first.

    Attributes:
        source: (M,) flat (row-major) patch indices in A.
        target: (M,) flat patch indices in B.
        similarity: (M,) cosine similarity of each pair, descending.
    """

    source: torch.Tensor
    target: torch.Tensor
    similarity: torch.Tensor

    def __len__(self) -> int:
        return int(self.source.shape[0])

    def top(self, n: int) -> Matches:
        """The ``n`` strongest pairs."""
        if n < 1:
            raise ValueError(f"the number of matches must be >= 1, got {n}")
        return Matches(self.source[:n], self.target[:n], self.similarity[:n])


def mutual_nearest_neighbours(a: torch.Tensor, b: torch.Tensor) -> Matches:
    """Best buddies between two sets of tokens.

    Args:
        a: (h, w, D) patch tokens of image A, or (M, D) rows.
        b: Those of image B (its grid may differ).

    Returns:
        :class:`Matches` into the flattened tokens, sorted by similarity, strongest first.

    Example:
        >>> tokens = torch.randn(10, 8)
        >>> matches = mutual_nearest_neighbours(tokens, tokens[[3, 1, 2]])
        >>> sorted(zip(matches.source.tolist(), matches.target.tolist()))
        [(1, 1), (2, 2), (3, 0)]
    """
    if a.ndim not in (2, 3) or b.ndim not in (2, 3):
        raise ValueError(f"tokens must be (h, w, D) or (M, D), got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"token dimensions differ: {a.shape[-1]} and {b.shape[-1]}")
    flat_a = F.normalize(a.reshape(-1, a.shape[-1]).float(), dim=-1)
    flat_b = F.normalize(b.reshape(-1, b.shape[-1]).float(), dim=-1)
    scores = flat_a @ flat_b.T
    best_in_b = scores.argmax(dim=1)
    best_in_a = scores.argmax(dim=0)
    source = torch.nonzero(best_in_a[best_in_b] == torch.arange(len(flat_a), device=scores.device))[:, 0]
    target = best_in_b[source]
    similarity = scores[source, target]
    order = torch.argsort(similarity, descending=True, stable=True)
    return Matches(source[order], target[order], similarity[order])


def grid_positions(indices: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(M,) flat row-major patch indices -> (M, 2) (row, col) in a grid of ``grid`` = (h, w)."""
    return torch.stack([indices // grid[1], indices % grid[1]], dim=1)
