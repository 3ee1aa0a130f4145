"""Patch similarity maps: how alike one patch's token is to every patch of the same or other images
(the "click a point, see where else it is" figure of DINOv3)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def similarity_maps(queries: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each query token to every token of a map.

    Args:
        queries: (Q, D) query tokens.
        tokens: (..., D) tokens, e.g. (h, w, D) or (N, h, w, D) patch tokens.

    Returns:
        (Q, ...) similarities in [-1, 1].

    Example:
        >>> tokens = torch.randn(3, 4, 8)
        >>> round(similarity_maps(tokens[1, 2][None], tokens)[0, 1, 2].item(), 4)
        1.0
    """
    if queries.ndim != 2:
        raise ValueError(f"queries must be (Q, D), got {tuple(queries.shape)}")
    if tokens.shape[-1] != queries.shape[1]:
        raise ValueError(f"queries have {queries.shape[1]} dims, tokens {tokens.shape[-1]}")
    flat = F.normalize(tokens.reshape(-1, tokens.shape[-1]).float(), dim=-1)
    scores = F.normalize(queries.float(), dim=-1) @ flat.T
    return scores.reshape(queries.shape[0], *tokens.shape[:-1])


def point_similarity(patches: torch.Tensor, points: Sequence[tuple[int, int]],
                     targets: Sequence[torch.Tensor] = ()) -> list[torch.Tensor]:
    """Similarity maps of the patches at ``points`` of one image to it and to target images.

    Args:
        patches: (h, w, D) patch tokens of the query image.
        points: (row, col) patch positions in ``patches``.
        targets: (h_i, w_i, D) patch tokens of other images (grids may differ).

    Returns:
        One (Q, h_i, w_i) tensor per image: the query image first, then each target.
    """
    if patches.ndim != 3:
        raise ValueError(f"patches must be (h, w, D), got {tuple(patches.shape)}")
    if not points:
        raise ValueError("point_similarity needs at least one query point")
    h, w = patches.shape[:2]
    for row, col in points:
        if not (0 <= row < h and 0 <= col < w):
            raise ValueError(f"patch ({row}, {col}) is outside the {h}x{w} grid")
    queries = torch.stack([patches[row, col] for row, col in points])
    return [similarity_maps(queries, image) for image in (patches, *targets)]
