"""The loss terms of DINOv2 as pure functions: DINO cross-entropy on the CLS token (local and global
terms), the iBOT masked-patch cross-entropy, and the KoLeo spreading term.

Each follows the official arithmetic (``ssl_meta_arch.py``, ``dino_clstoken_loss.py``,
``ibot_patch_loss.py``, ``koleo_loss.py``; ``shared/reference/dinov2-train-facts.md`` sections 2-5),
including the places where a natural re-implementation differs: the teacher's global rows are
crop-swapped, local crops are scored against both teacher crops, the iBOT loss is normalised by every
global-crop image (masked or not), and KoLeo's distance adds its epsilon to the difference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy_sum(student_chunks: list[torch.Tensor], teacher_chunks: list[torch.Tensor],
                      student_temp: float) -> torch.Tensor:
    """``-sum over (student chunk s, teacher chunk t) of mean_rows sum_k t_k log softmax(s / T_s)_k``.

    Example:
        >>> s, t = torch.zeros(2, 4), torch.full((2, 4), 0.25)
        >>> round(float(cross_entropy_sum([s], [t, t], 0.1)), 4)  # 2 pairs x log 4
        2.7726
    """
    total = torch.zeros((), device=student_chunks[0].device)
    for student in student_chunks:
        log_probs = F.log_softmax(student / student_temp, dim=-1)
        for teacher in teacher_chunks:
            total = total - torch.sum(teacher * log_probs, dim=-1).mean()
    return total


def dino_terms(student_local: torch.Tensor, student_global: torch.Tensor, teacher_swapped: torch.Tensor,
               n_local_crops: int, student_temp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The official ``dino_local_crops_loss`` and ``dino_global_crops_loss``.

    Args:
        student_local: (n_local * B, K) student head outputs of the local crops, crop-major.
        student_global: (2B, K) student head outputs of the global crops, crop-major (crop 0 first).
        teacher_swapped: (2B, K) teacher targets, crop-swapped: rows 0..B-1 come from global crop 1, so
            row r is the target of student row r of the other crop.
        n_local_crops: Local crops per image.
        student_temp: Student temperature (0.1).

    Returns:
        (local term, global term), each divided by the official number of terms 2 + max(2 n_local, 1), the
        global one multiplied by 2, as the official code reports them.
    """
    denominator = 2 + max(2 * n_local_crops, 1)  # the official term count, also without local crops
    teacher_chunks = list(teacher_swapped.chunk(2))
    if n_local_crops:
        local = cross_entropy_sum(list(student_local.chunk(n_local_crops)), teacher_chunks,
                                  student_temp) / denominator
    else:
        local = torch.zeros((), device=student_global.device)
    global_term = cross_entropy_sum([student_global], [teacher_swapped], student_temp) * 2 / denominator
    return local, global_term


def ibot_loss(student_masked: torch.Tensor, teacher_masked: torch.Tensor, weights: torch.Tensor,
              n_images: int, student_temp: float) -> torch.Tensor:
    """``-sum_j w_j sum_k t_jk log softmax(s_j / T_s)_k / n_images`` over the masked patches j.

    Args:
        student_masked: (M, K) student head outputs at the masked patches.
        teacher_masked: (M, K) teacher targets at the same patches (from the unmasked view).
        weights: (M,) 1 / (masked patches of j's image): a mean per image.
        n_images: Every global-crop image of this rank (2B), masked or not: the official normaliser.
        student_temp: Student temperature.

    Example:
        >>> s, t = torch.zeros(3, 4), torch.full((3, 4), 0.25)
        >>> round(float(ibot_loss(s, t, torch.full((3,), 1 / 3), 2, 0.1)), 4)  # one image's mean, / 2
        0.6931
    """
    per_patch = torch.sum(teacher_masked * F.log_softmax(student_masked / student_temp, dim=-1), dim=-1)
    return -(per_patch * weights).sum() / n_images


def koleo_loss(features: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Kozachenko-Leonenko entropy estimator: ``-mean_i log(||x_i - x_nn(i) + eps|| + eps)`` of the
    L2-normalised rows, nn(i) the row of largest dot product other than i; in float32 under autocast.

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
        >>> round(float(koleo_loss(x)), 4)  # every nearest neighbour at distance sqrt(2)
        -0.3466
    """
    with torch.autocast(features.device.type, enabled=False):
        x = F.normalize(features.float(), eps=eps, p=2, dim=-1)
        with torch.no_grad():
            dots = x @ x.t()
            dots.view(-1)[:: len(x) + 1].fill_(-1)
            nearest = dots.argmax(dim=1)
        distances = F.pairwise_distance(x, x[nearest], p=2, eps=eps)
        return -torch.log(distances + eps).mean()
