"""DINOv3's "v2" schedules and its learning-rate scaling rule, as pure functions (float64 numpy arrays).

Facts from the official DINOv3 code: a schedule is a linear warm-up ``linspace(start, peak, warmup,
endpoint=False)``, then a half cosine from ``peak`` to ``end`` over ``cosine`` iterations
(``linspace(0, pi, cosine)``, both ends included; default: every iteration after the warm-up), then
``end`` until the last iteration. Warm-up then constant is ``peak == end``; a constant is
``start == peak == end``. The learning rate's ``peak`` and ``end`` (not ``start``) are multiplied by
``4 sqrt(batch_per_gpu * gpus / 1024)``; the last layer's learning rate is the learning rate with its
first ``freeze_last_layer_epochs`` epochs at 0. The same shape gives the DINO local-loss weight and the
Gram loss weight (0, then a cosine over a few iterations to the final value), unscaled. Indexing past
the end is an error, as in the official arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def sqrt_lr_scale(batch_size_per_gpu: int, world_size: int) -> float:
    """The official ``sqrt_wrt_1024`` factor, ``4 sqrt(batch_size_per_gpu * world_size / 1024)``.

    Example:
        >>> sqrt_lr_scale(16, 256)
        8.0
    """
    if batch_size_per_gpu <= 0 or world_size <= 0:
        raise ValueError(f"batch size per GPU ({batch_size_per_gpu}) and world size ({world_size}) must be "
                         "positive")
    return 4 * math.sqrt(batch_size_per_gpu * world_size / 1024.0)


def warmup_cosine_constant(start: float, peak: float, end: float, warmup_iters: int, total_iters: int,
                           cosine_iters: int | None = None) -> np.ndarray:
    """Warm-up (end point excluded), half cosine from ``peak`` to ``end`` (both included), constant ``end``.

    Args:
        start: First warm-up value.
        peak: Value the warm-up heads for and the cosine starts from.
        end: Last value of the cosine and of the constant tail.
        warmup_iters: Iterations of warm-up.
        total_iters: Length of the schedule.
        cosine_iters: Iterations of the cosine; None: all after the warm-up.

    Example:
        >>> [round(float(v), 3) for v in warmup_cosine_constant(0.0, 1.0, 0.5, 2, 7, 3)]
        [0.0, 0.5, 1.0, 0.75, 0.5, 0.5, 0.5]
    """
    if cosine_iters is None:
        cosine_iters = total_iters - warmup_iters
    if min(warmup_iters, cosine_iters, total_iters) < 0 or warmup_iters + cosine_iters > total_iters:
        raise ValueError(f"schedule: warm-up ({warmup_iters}) and cosine ({cosine_iters}) iterations must be "
                         f">= 0 and fit in the {total_iters} iterations")
    warmup = np.linspace(start, peak, warmup_iters, endpoint=False)
    cosine = (peak - end) * (np.cos(np.linspace(0, np.pi, cosine_iters)) + 1) / 2 + end
    constant = np.full(total_iters - warmup_iters - cosine_iters, end, dtype=np.float64)
    return np.concatenate([warmup, cosine, constant])


@dataclass(frozen=True)
class WarmupCosine:
    """One official "v2" schedule setting, in epochs (the ``schedules.*`` config sections).

    Example:
        >>> WarmupCosine(start=0, peak=1, end=1, warmup_epochs=1).build(epoch_length=4, epochs=2).tolist()
        [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0]
    """

    start: float
    peak: float
    end: float
    warmup_epochs: float = 0
    cosine_epochs: float | None = None

    def build(self, epoch_length: int, epochs: int, *, scale: float = 1.0) -> np.ndarray:
        """The per-iteration array of ``epochs * epoch_length`` values; ``scale`` multiplies ``peak`` and
        ``end`` (the learning-rate rule)."""
        cosine = None if self.cosine_epochs is None else round(epoch_length * self.cosine_epochs)
        return warmup_cosine_constant(self.start, self.peak * scale, self.end * scale,
                                      round(epoch_length * self.warmup_epochs), epoch_length * epochs, cosine)


@dataclass(frozen=True)
class V2Schedules:
    """Per-iteration values of one run (float64 arrays of the run's length)."""

    lr: np.ndarray
    weight_decay: np.ndarray
    momentum: np.ndarray
    teacher_temp: np.ndarray
    last_layer_lr: np.ndarray


def build_v2_schedules(*, lr: WarmupCosine, weight_decay: WarmupCosine, momentum: WarmupCosine,
                       teacher_temp: WarmupCosine, freeze_last_layer_epochs: float, epoch_length: int,
                       epochs: int, batch_size_per_gpu: int, world_size: int) -> V2Schedules:
    """The five official schedules of a "v2" run, the learning rate scaled by :func:`sqrt_lr_scale`."""
    rates = lr.build(epoch_length, epochs, scale=sqrt_lr_scale(batch_size_per_gpu, world_size))
    last_layer = rates.copy()
    last_layer[: round(epoch_length * freeze_last_layer_epochs)] = 0.0
    return V2Schedules(rates, weight_decay.build(epoch_length, epochs), momentum.build(epoch_length, epochs),
                       teacher_temp.build(epoch_length, epochs), last_layer)
