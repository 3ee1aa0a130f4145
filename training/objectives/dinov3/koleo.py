"""Distributed KoLeo: the Kozachenko-Leonenko regulariser with neighbours searched across ranks.

Facts from the official DINOv3 code (formulas only): the rows (a rank's CLS tokens of one global crop)
are L2-normalised (eps 1e-8) and all-gathered over the process group, with the gradient flowing back
through the gather; the global batch is cut into groups of ``group_size`` consecutive rows (default:
the whole global batch) and a rank's rows search their ``topk`` nearest neighbours (largest dot
product, the row itself excluded) among its group's rows; the distance is ``||x - x_nn + 1e-8||`` (the
epsilon added to each component, as ``PairwiseDistance``); the loss is ``-mean(log(d + 1e-8))`` over
the ``B_local * topk`` pairs. At world size 1 with ``topk=1`` it is the plain KoLeo loss.

:func:`neighbour_distances` is the nearest-neighbour and distance step both variants share: plain KoLeo
is ``-log(neighbour_distances(x, x, 0, 1) + eps).mean()`` on the normalised rows.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn.functional as F

KOLEO_EPS = 1e-8


def neighbour_distances(x: torch.Tensor, candidates: torch.Tensor, first_self: int, topk: int,
                        eps: float = KOLEO_EPS) -> torch.Tensor:
    """Distances of each row of ``x`` to its ``topk`` nearest rows of ``candidates``, (len(x) * topk,).

    Args:
        x: (L, D) L2-normalised rows.
        candidates: (G, D) L2-normalised rows that hold ``x`` at rows ``[first_self, first_self + L)``;
            those self-pairs are excluded.
        first_self: Row of ``candidates`` that is ``x[0]``.
        topk: Neighbours per row (by the largest dot products, found without gradient).
        eps: Added to every component of the difference before the 2-norm.

    Returns:
        Row-major distances: the ``topk`` of row 0, then of row 1, ...

    Example:
        >>> x = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=-1)
        >>> [round(d, 3) for d in neighbour_distances(x, x, 0, 1).tolist()]
        [0.765, 0.765, 0.765]
    """
    rows = x.shape[0]
    if not 1 <= topk < candidates.shape[0]:
        raise ValueError(f"KoLeo topk must lie in [1, {candidates.shape[0] - 1}] (the other rows of the "
                         f"neighbour set), got {topk}")
    if not 0 <= first_self <= candidates.shape[0] - rows:
        raise ValueError(f"KoLeo: rows [{first_self}, {first_self + rows}) are not inside the "
                         f"{candidates.shape[0]} candidate rows")
    with torch.no_grad():
        dots = x @ candidates.t()
        index = torch.arange(rows, device=x.device)
        dots[index, index + first_self] = -1.0
        neighbours = dots.topk(topk, dim=1).indices
    expanded = x.repeat_interleave(topk, dim=0)
    return F.pairwise_distance(expanded, candidates[neighbours.flatten()], p=2.0, eps=eps)


def koleo_loss_distributed(x: torch.Tensor, *, topk: int = 1, group_size: int | None = None,
                           process_group: dist.ProcessGroup | None = None, eps: float = KOLEO_EPS
                           ) -> torch.Tensor:
    """The official distributed KoLeo loss of this rank's rows.

    Args:
        x: (B_local, D) features of this rank (every rank the same B_local).
        topk: Nearest neighbours per row.
        group_size: Rows of the global batch that form one neighbour set (a multiple of B_local that
            divides the global batch); None: the whole global batch.
        process_group: The group to gather over; None: the default group when torch.distributed is
            initialised, else this process alone.
        eps: The normalisation, distance and log epsilon (1e-8).

    Returns:
        This rank's loss. The gradient flows to the other ranks' rows through the gather: after every
        rank's backward, each rank's rows hold the gradient of the sum of all ranks' losses (the
        data-parallel gradient average then makes it that of their mean).
    """
    x = F.normalize(x, p=2.0, dim=-1, eps=eps)
    if dist.is_available() and dist.is_initialized():
        world, rank = dist.get_world_size(process_group), dist.get_rank(process_group)
        gathered = dist_fn.all_gather(x, group=process_group) if world > 1 else [x]  # type: ignore[no-untyped-call]
        everyone = torch.cat(gathered)
    else:
        world, rank, everyone = 1, 0, x
    local, total = x.shape[0], everyone.shape[0]
    size = total if group_size is None else group_size
    if size <= 0 or size % local:
        raise ValueError(f"KoLeo group size {size} must be a positive multiple of the local batch {local}")
    if total % size:
        raise ValueError(f"KoLeo group size {size} must divide the global batch {total}")
    ranks_per_group = world // (total // size)
    group = everyone.view(total // size, size, -1)[rank // ranks_per_group]
    distances = neighbour_distances(x, group, (rank % ranks_per_group) * local, topk, eps)
    return -torch.log(distances.float() + eps).mean()
