"""Per-iteration and per-epoch schedules of DINO training, as pure functions.

Both follow the official ``main_dino.py`` / ``utils.py`` numerics exactly (float64 numpy
arrays), including their quirks: with warm-up the peak value appears twice, the final value
of a cosine schedule is never reached, and the teacher-temperature warm-up includes its end
point.
"""

from __future__ import annotations

import numpy as np


def cosine_schedule(
    base_value: float,
    final_value: float,
    epochs: int,
    niter_per_ep: int,
    warmup_epochs: int = 0,
    start_warmup_value: float = 0.0,
) -> np.ndarray:
    """Linear warm-up followed by a half-cosine, one value per training iteration.

    Args:
        base_value: Value at the end of the warm-up (the peak).
        final_value: Value the cosine tends to (never reached exactly).
        epochs: Total number of epochs.
        niter_per_ep: Iterations per epoch.
        warmup_epochs: Epochs of linear warm-up from ``start_warmup_value`` to ``base_value``.
        start_warmup_value: First value of the warm-up.

    Returns:
        float64 array of length ``epochs * niter_per_ep``, indexed by the global iteration.

    Example:
        >>> s = cosine_schedule(1.0, 0.0, epochs=2, niter_per_ep=2, warmup_epochs=1)
        >>> [round(float(v), 3) for v in s]
        [0.0, 1.0, 1.0, 0.5]
    """
    if epochs <= 0 or niter_per_ep <= 0:
        raise ValueError(f"epochs ({epochs}) and niter_per_ep ({niter_per_ep}) must be positive")
    if not 0 <= warmup_epochs <= epochs:
        raise ValueError(f"warmup_epochs ({warmup_epochs}) must lie in [0, epochs={epochs}]")
    warmup_iters = warmup_epochs * niter_per_ep
    warmup = np.linspace(start_warmup_value, base_value, warmup_iters) if warmup_iters > 0 else np.array([])
    steps = np.arange(epochs * niter_per_ep - warmup_iters)
    cosine = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * steps / len(steps)))
    schedule = np.concatenate((warmup, cosine))
    assert len(schedule) == epochs * niter_per_ep
    return schedule


def teacher_temp_schedule(
    warmup_teacher_temp: float,
    teacher_temp: float,
    warmup_teacher_temp_epochs: int,
    nepochs: int,
) -> np.ndarray:
    """Teacher temperature per epoch: linear warm-up (end point included), then constant.

    Args:
        warmup_teacher_temp: Temperature of epoch 0.
        teacher_temp: Temperature after the warm-up.
        warmup_teacher_temp_epochs: Epochs of warm-up (0 = constant ``teacher_temp``).
        nepochs: Total number of epochs.

    Returns:
        float64 array of length ``nepochs``.

    Example:
        >>> [round(float(t), 3) for t in teacher_temp_schedule(0.04, 0.07, 3, 4)]
        [0.04, 0.055, 0.07, 0.07]
    """
    if not 0 <= warmup_teacher_temp_epochs <= nepochs:
        raise ValueError(
            f"warmup_teacher_temp_epochs ({warmup_teacher_temp_epochs}) must lie in [0, nepochs={nepochs}]"
        )
    return np.concatenate((
        np.linspace(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs),
        np.ones(nepochs - warmup_teacher_temp_epochs) * teacher_temp,
    ))
