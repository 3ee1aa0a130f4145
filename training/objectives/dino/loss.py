"""The DINO self-distillation loss: cross-entropy between sharpened, centred teacher views and
every other student view, plus the EMA centre.

The loss itself (:func:`dino_loss`) and the centre update (:func:`update_center`) are pure
functions; :class:`DINOLoss` only carries the centre between calls and all-reduces the teacher
statistics across ranks when a process group is initialised.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def dino_loss(
    student_out: torch.Tensor,
    teacher_out: torch.Tensor,
    center: torch.Tensor,
    teacher_temp: float,
    student_temp: float,
    n_crops: int,
) -> torch.Tensor:
    """Average cross-entropy over all (teacher view i, student view v != i) pairs.

    Args:
        student_out: (n_crops * B, K) head outputs, rows grouped by crop (global crops first).
        teacher_out: (2 * B, K) teacher head outputs for the two global crops.
        center: (1, K) current centre (before this call's update).
        teacher_temp: Teacher sharpening temperature.
        student_temp: Student temperature (0.1 in DINO).
        n_crops: Number of student crops (2 global + local ones).

    Returns:
        Scalar loss.

    Example:
        >>> s, t = torch.randn(6 * 2, 8), torch.randn(2 * 2, 8)
        >>> dino_loss(s, t, torch.zeros(1, 8), 0.04, 0.1, n_crops=6).ndim
        0
    """
    student_views = (student_out / student_temp).chunk(n_crops)
    teacher_probs = F.softmax((teacher_out - center) / teacher_temp, dim=-1).detach().chunk(2)
    total = student_out.new_zeros(())
    n_terms = 0
    # Summation order of the official loss: teacher view outer, student view inner.
    for i, q in enumerate(teacher_probs):
        for v, student_view in enumerate(student_views):
            if v == i:
                continue
            total = total + torch.sum(-q * F.log_softmax(student_view, dim=-1), dim=-1).mean()
            n_terms += 1
    return total / n_terms


def update_center(
    center: torch.Tensor, teacher_sum: torch.Tensor, n_rows: int, momentum: float
) -> torch.Tensor:
    """EMA of the mean teacher output: ``center * m + teacher_sum / n_rows * (1 - m)``.

    Args:
        center: (1, K) previous centre.
        teacher_sum: (1, K) sum of the teacher rows (over all ranks when distributed).
        n_rows: Number of rows summed (rows per rank * world size).
        momentum: Centre momentum (0.9 in DINO).

    Returns:
        The new (1, K) centre.

    Example:
        >>> update_center(torch.zeros(1, 2), torch.ones(1, 2) * 4, 4, 0.9)
        tensor([[0.1000, 0.1000]])
    """
    return center * momentum + (teacher_sum / n_rows) * (1 - momentum)


class DINOLoss(nn.Module):
    """Stateful wrapper: loss with the current centre, then the centre update.

    The centre is a buffer, so it is saved in ``state_dict()`` (key ``center``) like the
    official ``dino_loss`` checkpoint entry.

    Example:
        >>> loss_fn = DINOLoss(out_dim=8, n_crops=4)
        >>> loss = loss_fn(torch.randn(8, 8), torch.randn(4, 8), teacher_temp=0.04)
        >>> loss_fn.center.shape
        torch.Size([1, 8])
    """

    center: torch.Tensor

    def __init__(
        self, out_dim: int, n_crops: int, student_temp: float = 0.1, center_momentum: float = 0.9
    ) -> None:
        super().__init__()
        self.n_crops = n_crops
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(
        self, student_out: torch.Tensor, teacher_out: torch.Tensor, teacher_temp: float
    ) -> torch.Tensor:
        loss = dino_loss(student_out, teacher_out, self.center, teacher_temp, self.student_temp, self.n_crops)
        self.update(teacher_out)
        return loss

    @torch.no_grad()
    def update(self, teacher_out: torch.Tensor) -> None:
        """Update the centre with this step's teacher output, all-reduced across ranks."""
        teacher_sum = torch.sum(teacher_out, dim=0, keepdim=True)
        world_size = 1
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(teacher_sum)
            world_size = dist.get_world_size()
        new = update_center(self.center, teacher_sum, len(teacher_out) * world_size, self.center_momentum)
        self.center.copy_(new)
