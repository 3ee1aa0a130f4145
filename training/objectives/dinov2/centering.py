"""Teacher targets of DINOv2: softmax around an EMA centre, or Sinkhorn-Knopp equipartition.

Pure functions over teacher logits; the sums that span the whole batch are all-reduced across ranks when a
process group is initialised, as in the official code (``dino_clstoken_loss.py``, ``ibot_patch_loss.py``).
The same functions serve the CLS targets ((2B, K) rows) and the masked-patch targets ((M, K) rows).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over the ranks (in place), or unchanged on one process."""
    if _distributed():
        dist.all_reduce(tensor)
    return tensor


def softmax_center(logits: torch.Tensor, center: torch.Tensor, teacher_temp: float) -> torch.Tensor:
    """``softmax((logits - center) / T)`` over the last dimension.

    Example:
        >>> softmax_center(torch.zeros(2, 4), torch.zeros(1, 4), 0.04).sum(-1)
        tensor([1., 1.])
    """
    return torch.softmax((logits - center) / teacher_temp, dim=-1)


def batch_center(logits: torch.Tensor) -> torch.Tensor:
    """The mean teacher row of this step over all ranks, (1, K): rows summed over the ranks, divided by
    rows x world size (the DINO CLS centre).

    Example:
        >>> batch_center(torch.tensor([[1.0, 3.0], [3.0, 5.0]]))
        tensor([[2., 4.]])
    """
    world = dist.get_world_size() if _distributed() else 1
    return all_reduce_sum(logits.sum(dim=0, keepdim=True)) / (len(logits) * world)


def ema_center(center: torch.Tensor, batch: torch.Tensor, momentum: float) -> torch.Tensor:
    """``center * m + batch * (1 - m)``, the centre the next step uses.

    Example:
        >>> ema_center(torch.zeros(1, 2), torch.ones(1, 2), 0.9)
        tensor([[0.1000, 0.1000]])
    """
    return center * momentum + batch * (1 - momentum)


@torch.no_grad()
def sinkhorn_knopp(logits: torch.Tensor, teacher_temp: float, n_iterations: int = 3,
                   n_rows: torch.Tensor | int | None = None) -> torch.Tensor:
    """Equipartitioned targets (rows sum to 1, every prototype gets 1/K of the batch), in float32.

    As the official code: ``Q = exp(z / T)^T`` without subtracting the maximum (so logits / T above ~88
    overflow), normalised by its total, then ``n_iterations`` times rows (prototypes, all-reduced) and
    columns (samples); the sums over the batch span every rank.

    Args:
        logits: (B, K) teacher head outputs of this rank.
        teacher_temp: Temperature T.
        n_iterations: Sinkhorn iterations (3).
        n_rows: Rows of the whole batch over all ranks; by default ``B x world size``. The iBOT targets
            pass this rank's masked-patch count (a tensor), all-reduced here, as the official code does.

    Example:
        >>> q = sinkhorn_knopp(torch.randn(6, 4), 0.1)
        >>> torch.allclose(q.sum(-1), torch.ones(6))
        True
    """
    q = torch.exp(logits.float() / teacher_temp).t()
    if n_rows is None:
        total: torch.Tensor | int = q.shape[1] * (dist.get_world_size() if _distributed() else 1)
    elif isinstance(n_rows, torch.Tensor):
        total = all_reduce_sum(n_rows.clone())
    else:
        total = n_rows
    n_prototypes = q.shape[0]
    q /= all_reduce_sum(torch.sum(q))
    for _ in range(n_iterations):
        q /= all_reduce_sum(torch.sum(q, dim=1, keepdim=True))
        q /= n_prototypes
        q /= torch.sum(q, dim=0, keepdim=True)
        q /= total
    q *= total
    return q.t()
