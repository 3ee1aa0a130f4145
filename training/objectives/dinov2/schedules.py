"""DINOv2's per-iteration schedules and its learning-rate scaling rule, as pure functions.

The official ``CosineScheduler`` (``dinov2/utils/utils.py``): ``linspace(start, base, warmup)`` (both ends
included, so ``base`` appears twice at the seam), then ``final + (base - final)(1 + cos(pi i / n)) / 2``
for i < n = total - warmup (``final`` is never reached inside), and ``final`` for every index past the end.
Everything is per iteration, the teacher temperature too; the last layer's lr is the lr schedule with its
first ``freeze`` iterations set to 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class IterationSchedule:
    """One schedule: ``values[it]`` inside, ``final`` past the end.

    Example:
        >>> s = IterationSchedule.cosine(1.0, 0.0, total=4, warmup=2)
        >>> [round(s[i], 3) for i in range(5)]
        [0.0, 1.0, 1.0, 0.5, 0.0]
    """

    values: np.ndarray
    final: float

    @classmethod
    def cosine(cls, base: float, final: float, total: int, warmup: int = 0, start: float = 0.0,
               ) -> IterationSchedule:
        if not 0 <= warmup <= total:
            raise ValueError(f"warm-up ({warmup} iterations) must lie in [0, total = {total}]")
        steps = np.arange(total - warmup)
        cosine = final + 0.5 * (base - final) * (1 + np.cos(np.pi * steps / max(len(steps), 1)))
        return cls(np.concatenate((np.linspace(start, base, warmup), cosine)), final)

    def frozen(self, iterations: int) -> IterationSchedule:
        """The same schedule with its first ``iterations`` values set to 0 (the last layer's lr)."""
        values = self.values.copy()
        values[:iterations] = 0
        return IterationSchedule(values, self.final)

    def __getitem__(self, it: int) -> float:
        return float(self.values[it]) if it < len(self.values) else float(self.final)


def sqrt_scaled_lr(base_lr: float, batch_per_process: int, world_size: int) -> float:
    """The official ``sqrt_wrt_1024`` rule: ``base_lr * sqrt(total batch / 1024)``.

    Example:
        >>> sqrt_scaled_lr(0.032, 4, 1)
        0.002
    """
    return base_lr * math.sqrt(batch_per_process * world_size / 1024.0)


@dataclass(frozen=True)
class DinoV2Schedules:
    """lr, weight decay, teacher momentum, teacher temperature and last-layer lr, per iteration."""

    lr: IterationSchedule
    wd: IterationSchedule
    momentum: IterationSchedule
    teacher_temp: IterationSchedule
    last_layer_lr: IterationSchedule

    @classmethod
    def build(cls, *, lr: float, min_lr: float, epochs: int, iters_per_epoch: int, warmup_epochs: int,
              weight_decay: float, weight_decay_end: float, momentum: float, final_momentum: float,
              warmup_teacher_temp: float, teacher_temp: float, warmup_teacher_temp_epochs: int,
              freeze_last_layer_epochs: int) -> DinoV2Schedules:
        """The official schedules (``train.py`` ``build_schedulers``) for ``lr`` already scaled."""
        total, per = epochs * iters_per_epoch, iters_per_epoch
        lr_schedule = IterationSchedule.cosine(lr, min_lr, total, warmup_epochs * per)
        warm = warmup_teacher_temp_epochs * per
        return cls(
            lr=lr_schedule,
            wd=IterationSchedule.cosine(weight_decay, weight_decay_end, total),
            momentum=IterationSchedule.cosine(momentum, final_momentum, total),
            teacher_temp=IterationSchedule.cosine(teacher_temp, teacher_temp, warm, warm,
                                                  warmup_teacher_temp),
            last_layer_lr=lr_schedule.frozen(freeze_last_layer_epochs * per),
        )
