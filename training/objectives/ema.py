"""The EMA teacher update of DINO: teacher <- m * teacher + (1 - m) * student."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float, *, alpha_form: bool = False) -> None:
    """Move every teacher parameter towards the student's, in parameter order.

    All parameters take part, also those with ``requires_grad=False`` (the frozen weight-norm
    gain). The result is bit-identical to the official two in-place float32 operations
    ``t.mul_(m); t.add_((1 - m) * s)``.

    Args:
        teacher: Module whose parameters are updated in place.
        student: Module with the same parameter list (unwrap DDP first).
        momentum: m in [0, 1].
        alpha_form: DINOv2's ``_foreach_add_(t, s, alpha=1 - m)`` instead of DINO's rounded ``(1 - m) * s``.

    Example:
        >>> t, s = nn.Linear(2, 2), nn.Linear(2, 2)
        >>> ema_update(t, s, 0.0)
        >>> torch.equal(t.weight, s.weight)
        True
    """
    teacher_params: list[torch.Tensor] = list(teacher.parameters())
    student_params: list[torch.Tensor] = [p.detach() for p in student.parameters()]
    if len(teacher_params) != len(student_params):
        raise ValueError(
            f"teacher has {len(teacher_params)} parameters, student {len(student_params)}; they must match"
        )
    torch._foreach_mul_(teacher_params, momentum)
    if alpha_form:
        torch._foreach_add_(teacher_params, student_params, alpha=1 - momentum)
        return
    # (1 - m) * s is rounded to float32 first, exactly like the official `(1 - m) * s.detach()`.
    scaled: list[torch.Tensor] = list(torch._foreach_mul(student_params, 1 - momentum))
    torch._foreach_add_(teacher_params, scaled)
