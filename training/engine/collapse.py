"""Collapse guard: statistics of the teacher's output distribution and a detector that names the
two ways DINO training fails (Caron et al. 2021, section 5.3 and figure 7).

* **Dominant-dimension collapse**: every image lands on the same prototype; the batch-mean teacher
  distribution puts most of its mass on one dimension and the effective number of dimensions in
  use falls to about 1 (too little centring).
* **Uniform collapse**: the teacher output is flat for every image; its per-image entropy reaches
  log K and KL(teacher || student) falls to 0 (too much centring or too little sharpening).

The statistics are small pure functions; :class:`CollapseDetector` averages them over windows of
iterations and returns one warning (once per run) after ``patience`` windows in a row show the
same failure.

Example:
    >>> t, s = torch.zeros(4, 8), torch.zeros(4, 8)
    >>> stats = collapse_stats(t, s, torch.zeros(1, 8), teacher_temp=0.04, student_temp=0.1)
    >>> round(stats["teacher_entropy"], 4) == round(math.log(8), 4)
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


def row_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Mean entropy (nats) of the rows of ``probs`` (B, K), each a distribution.

    Example:
        >>> round(float(row_entropy(torch.full((2, 4), 0.25))), 4)
        1.3863
    """
    return -(probs * torch.log(probs.clamp_min(1e-12))).sum(dim=-1).mean()


def kl_divergence(teacher_probs: torch.Tensor, student_log_probs: torch.Tensor) -> torch.Tensor:
    """Mean over rows of KL(teacher || student), in nats.

    Example:
        >>> p = torch.tensor([[0.5, 0.5]])
        >>> float(kl_divergence(p, p.log()))
        0.0
    """
    log_teacher = torch.log(teacher_probs.clamp_min(1e-12))
    return (teacher_probs * (log_teacher - student_log_probs)).sum(dim=-1).mean()


def effective_dimensions(probs: torch.Tensor) -> torch.Tensor:
    """exp(entropy of the batch-mean distribution): how many of the K dimensions are in use.

    K when the batch spreads evenly over all dimensions, 1 when every row picks the same one.

    Example:
        >>> float(effective_dimensions(torch.eye(4)))
        4.0
        >>> float(effective_dimensions(torch.tensor([[1.0, 0.0], [1.0, 0.0]])))
        1.0
    """
    return torch.exp(row_entropy(probs.mean(dim=0, keepdim=True)))


def top_dimension_mass(probs: torch.Tensor) -> torch.Tensor:
    """The largest entry of the batch-mean distribution (1 / K at best, 1 when collapsed)."""
    return probs.mean(dim=0).max()


@torch.no_grad()
def collapse_stats(
    teacher_out: torch.Tensor,
    student_out: torch.Tensor,
    center: torch.Tensor,
    teacher_temp: float,
    student_temp: float,
) -> dict[str, float]:
    """The guard's per-iteration statistics of one batch.

    Args:
        teacher_out: (2B, K) teacher head outputs of the global crops.
        student_out: (n_crops * B, K) student head outputs; its first 2B rows are the same global
            crops, compared view for view with the teacher.
        center: (1, K) the centre applied to the teacher this iteration.
        teacher_temp: Teacher temperature of this iteration.
        student_temp: Student temperature.

    Returns:
        ``teacher_entropy`` (mean per-image entropy, nats), ``kl_teacher_student`` (nats),
        ``center_norm``, ``effective_dims`` and ``top_dim_mass``.
    """
    teacher = teacher_out.float()
    probs = F.softmax((teacher - center.float()) / teacher_temp, dim=-1)
    return target_stats(probs, student_out[: len(teacher)], student_temp, center)


@torch.no_grad()
def target_stats(probs: torch.Tensor, student_out: torch.Tensor, student_temp: float,
                 center: torch.Tensor | None = None, prefix: str = "") -> dict[str, float]:
    """:func:`collapse_stats` of given teacher targets ``probs`` (B, K) against the student's outputs for the
    same rows (B, K); ``prefix`` names another set (``"patch_"``: DINOv2's iBOT targets).

    Example:
        >>> stats = target_stats(torch.full((2, 4), 0.25), torch.zeros(2, 4), 0.1, prefix="patch_")
        >>> round(stats["patch_effective_dims"], 3)
        4.0
    """
    student_log = F.log_softmax(student_out.float() / student_temp, dim=-1)
    stats = {
        "teacher_entropy": float(row_entropy(probs)),
        "kl_teacher_student": float(kl_divergence(probs, student_log)),
        "center_norm": float(center.float().norm()) if center is not None else 0.0,
        "effective_dims": float(effective_dimensions(probs)),
        "top_dim_mass": float(top_dimension_mass(probs)),
    }
    return {prefix + key: value for key, value in stats.items()}


ADVICE = {
    "dominant": (
        "the teacher puts {mass:.0%} of its mass on one of {k} output dimensions (effective dimensions "
        "{dims:.1f}): dominant-dimension collapse. Centre more (loss.center_momentum nearer 0.9, never "
        "1), raise loss.teacher_temp (0.04 -> 0.07), lower optim.lr, or raise the batch size"
    ),
    "uniform": (
        "the teacher's per-image entropy is {entropy:.2f} of log K = {log_k:.2f} nats: uniform collapse "
        "(the student has nothing to learn). Lower loss.teacher_temp (e.g. 0.04), keep "
        "loss.warmup_teacher_temp_epochs, use loss.center_momentum 0.9, keep the last head layer frozen "
        "longer (optim.freeze_last_layer), lower optim.lr, or raise the batch size"
    ),
}


def classify_window(mean_stats: dict[str, float], out_dim: int, *, uniform_fraction: float = 0.95,
                    dominant_mass: float = 0.5) -> str | None:
    """``"uniform"``, ``"dominant"`` or None for the statistics averaged over one window.

    Example:
        >>> classify_window({"teacher_entropy": 0.01, "top_dim_mass": 0.9}, out_dim=64)
        'dominant'
    """
    if mean_stats["teacher_entropy"] >= uniform_fraction * math.log(out_dim):
        return "uniform"
    if mean_stats["top_dim_mass"] >= dominant_mass:
        return "dominant"
    return None


@dataclass
class CollapseDetector:
    """Averages the statistics over ``window`` iterations; warns once after ``patience`` windows in a
    row show the same failure.

    Args:
        out_dim: K, the number of head outputs.
        window: Iterations per window (the trainer uses one epoch unless set).
        patience: Consecutive collapsed windows before the warning.
    """

    out_dim: int
    window: int
    patience: int = 3
    prefix: str = ""  # "patch_": watch DINOv2's iBOT targets (target_stats(..., prefix="patch_"))
    warned: bool = False
    _sums: dict[str, float] = field(default_factory=dict)
    _count: int = 0
    _streak: tuple[str | None, int] = (None, 0)

    def observe(self, stats: dict[str, float]) -> str | None:
        """Add one iteration's statistics; the warning text the first time collapse is confirmed. An
        iteration without this detector's statistics (no masked patch) is not counted."""
        if self.prefix + "teacher_entropy" not in stats:
            return None
        for key in ("teacher_entropy", "top_dim_mass", "effective_dims"):
            self._sums[key] = self._sums.get(key, 0.0) + stats[self.prefix + key]
        self._count += 1
        if self._count < self.window:
            return None
        mean = {key: value / self._count for key, value in self._sums.items()}
        self._sums, self._count = {}, 0
        mode = classify_window(mean, self.out_dim)
        previous, streak = self._streak
        self._streak = (mode, streak + 1 if mode is not None and mode == previous else int(mode is not None))
        if self.warned or mode is None or self._streak[1] < self.patience:
            return None
        self.warned = True
        text = ADVICE[mode].format(mass=mean["top_dim_mass"], k=self.out_dim, dims=mean["effective_dims"],
                                   entropy=mean["teacher_entropy"], log_k=math.log(self.out_dim))
        where = " of the masked patch tokens (iBOT)" if self.prefix else ""
        return f"collapse{where}: {text} ({self.patience} windows of {self.window} iterations in a row)"
