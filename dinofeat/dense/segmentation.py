"""Unsupervised segmentation: k-means over patch tokens, of one image or jointly over a set
(co-segmentation: the same cluster id is the same part in every image).

The clustering is ``faiss.Kmeans`` (a faiss-cpu dependency already, fast and well kept) on
L2-normalised tokens, so the distance it minimises is the cosine distance the DINO papers use.
"""

from __future__ import annotations

from collections.abc import Sequence

import faiss
import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_ITERATIONS = 50
#: faiss seeds k-means with random tokens; of several runs it keeps the one with the lowest error.
DEFAULT_RESTARTS = 5


def cluster_patches(tokens: torch.Tensor | Sequence[torch.Tensor], k: int, *, seed: int = 0,
                    iterations: int = DEFAULT_ITERATIONS, restarts: int = DEFAULT_RESTARTS
                    ) -> list[torch.Tensor]:
    """Cluster all patch tokens jointly into ``k`` parts.

    Args:
        tokens: (N, h, w, D) patch tokens, or a list of (h_i, w_i, D) / (N_i, h_i, w_i, D) maps
            (grids may differ).
        k: Number of clusters, 1 to the total number of patches.
        seed: Seed of the k-means initialisation (same seed, same tokens: same labels).
        iterations: k-means iterations.
        restarts: Independent initialisations; the best clustering is kept.

    Returns:
        One int64 label map per input, shaped like it without D; cluster 0 is the largest
        cluster over all images, 1 the next, and so on.

    Example:
        >>> one, other = torch.ones(8), -torch.ones(8)
        >>> tokens = torch.stack([one, one, one, other])[:, None].expand(4, 4, 8)[None]  # 4 x 4 grid
        >>> cluster_patches(tokens + 0.01 * torch.randn(1, 4, 4, 8), 2)[0][0, :, 0].tolist()
        [0, 0, 0, 1]
    """
    maps = [tokens] if isinstance(tokens, torch.Tensor) else list(tokens)
    if not maps:
        raise ValueError("cluster_patches needs tokens, got an empty list")
    if any(m.ndim < 2 for m in maps) or len({m.shape[-1] for m in maps}) > 1:
        raise ValueError(f"token maps must share D, got shapes {[tuple(m.shape) for m in maps]}")
    rows = torch.cat([m.reshape(-1, m.shape[-1]).float() for m in maps])
    total = rows.shape[0]
    if not 1 <= k <= total:
        raise ValueError(f"k must be between 1 and the number of patches ({total}), got {k}")
    data = np.ascontiguousarray(F.normalize(rows, dim=-1).cpu().numpy(), dtype=np.float32)
    kmeans = faiss.Kmeans(data.shape[1], k, niter=iterations, seed=seed, nredo=restarts, verbose=False,
                          min_points_per_centroid=1, max_points_per_centroid=max(total, 256))
    kmeans.train(data)
    _, assigned = kmeans.index.search(data, 1)
    labels = torch.from_numpy(assigned[:, 0].astype(np.int64))
    # Renumber by size so that colours do not depend on faiss's arbitrary cluster order.
    sizes = torch.bincount(labels, minlength=k)
    rank = torch.empty(k, dtype=torch.int64)
    rank[torch.argsort(sizes, descending=True, stable=True)] = torch.arange(k)
    labels = rank[labels]
    out, start = [], 0
    for m in maps:
        count = m[..., 0].numel()
        out.append(labels[start:start + count].reshape(m.shape[:-1]).to(m.device))
        start += count
    return out
