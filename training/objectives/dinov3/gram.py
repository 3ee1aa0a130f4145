"""Gram anchoring: the patch-similarity (Gram) matrices of the student against those of the Gram teacher.

Facts from the official DINOv3 training code (formulas only): the student's global-crop patch tokens
after its final norm, and the Gram teacher's patch tokens after its final norm on the Gram crops,
resized to the student's grid when the grids differ (:func:`resize_patch_features`, *before* any
normalisation); optionally only the masked or unmasked patches; then both L2-normalised (eps 1e-12),
``S = X X^T`` per image (or over all tokens of the batch), and ``L = mean((S_s - S_t)^2)``.

``remove_only_teacher_neg`` keeps the official behaviour: the teacher's negative similarities are set
to 0 and the student's are left as they are. (The official code also zeroes the student where both
are negative, but it tests the already-clamped teacher, so that clause never fires.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

GramTokens = Literal["all", "masked", "unmasked"]
ResizeMode = Literal["bicubic", "bilinear"]


@dataclass(frozen=True)
class GramOptions:
    """The Gram loss settings, named as the official ``gram`` config section.

    Attributes:
        normalized: L2-normalise each token (eps 1e-12) before the Gram matrix.
        img_level: One Gram matrix per image; False: one over all tokens of the local batch.
        remove_neg: Similarities below 0 set to 0, student's and teacher's.
        remove_only_teacher_neg: The teacher's similarities below 0 set to 0 (official: the student's stay).
        tokens_used: ``"all"`` patches, or only the ``"masked"`` / ``"unmasked"`` ones (batch level only).
    """

    normalized: bool = True
    img_level: bool = True
    remove_neg: bool = False
    remove_only_teacher_neg: bool = False
    tokens_used: GramTokens = "all"

    def __post_init__(self) -> None:
        if self.remove_neg and self.remove_only_teacher_neg:
            raise ValueError("gram: remove_neg and remove_only_teacher_neg exclude each other; set one")
        if self.tokens_used not in ("all", "masked", "unmasked"):
            raise ValueError("gram.tokens_used must be 'all', 'masked' or 'unmasked', "
                             f"got {self.tokens_used!r}")
        if self.tokens_used != "all" and self.img_level:
            raise ValueError(f"gram.tokens_used={self.tokens_used!r} selects patches of all images together: "
                             "it needs gram.img_level=False (per-image Gram matrices need every patch)")


def resize_patch_features(patches: torch.Tensor, source_grid: tuple[int, int], target_grid: tuple[int, int],
                          *, mode: ResizeMode = "bicubic", antialias: bool = False) -> torch.Tensor:
    """(n, hs*ws, D) patch tokens of an ``hs x ws`` grid resized to (n, ht*wt, D) on ``target_grid``.

    The tokens are viewed as (n, D, hs, ws) maps and interpolated (``align_corners=False``), as the
    official meta arch does with the Gram teacher's normed patch tokens; unchanged when the grids agree.

    Example:
        >>> resize_patch_features(torch.randn(2, 64, 8), (8, 8), (4, 4)).shape
        torch.Size([2, 16, 8])
    """
    if patches.ndim != 3 or patches.shape[1] != source_grid[0] * source_grid[1]:
        raise ValueError(f"patch features {tuple(patches.shape)} are not (images, {source_grid[0]}x"
                         f"{source_grid[1]} patches, D)")
    if mode not in ("bicubic", "bilinear"):
        raise ValueError(f"gram teacher resize method must be 'bicubic' or 'bilinear', got {mode!r}")
    if tuple(source_grid) == tuple(target_grid):
        return patches
    maps = patches.transpose(1, 2).reshape(len(patches), patches.shape[2], *source_grid)
    resized = F.interpolate(maps, size=tuple(target_grid), mode=mode, align_corners=False,
                            antialias=antialias)
    return resized.flatten(-2).transpose(1, 2)


def select_tokens(student: torch.Tensor, teacher: torch.Tensor, masks: torch.Tensor | None,
                  tokens_used: GramTokens) -> tuple[torch.Tensor, torch.Tensor]:
    """Both (n, N, D) as they are (``"all"``), or the (n_selected, D) rows where ``masks`` (n, N) is True
    (``"masked"``) or False (``"unmasked"``), in image-major order."""
    if tokens_used == "all":
        return student, teacher
    if masks is None or masks.dtype != torch.bool or masks.shape != student.shape[:2]:
        got = None if masks is None else f"{masks.dtype} {tuple(masks.shape)}"
        raise ValueError(f"gram.tokens_used={tokens_used!r} needs bool masks of shape "
                         f"{tuple(student.shape[:2])}, got {got}")
    keep = masks if tokens_used == "masked" else ~masks
    return student[keep], teacher[keep]


def gram_loss(student: torch.Tensor, teacher: torch.Tensor, *, normalized: bool = True,
              img_level: bool = True, remove_neg: bool = False, remove_only_teacher_neg: bool = False
              ) -> torch.Tensor:
    """Mean squared difference of the Gram matrices of ``student`` and ``teacher`` features.

    Args:
        student: (n, N, D) patch tokens, or (M, D) selected rows (then ``img_level`` must be False).
        teacher: Same shape, the Gram teacher's (resized) patch tokens.
        normalized, img_level, remove_neg, remove_only_teacher_neg: See :class:`GramOptions`.

    Returns:
        Scalar float32 loss (the features are cast to float32 first).

    Example:
        >>> x = torch.randn(2, 5, 8)
        >>> float(gram_loss(x, x))
        0.0
    """
    if student.shape != teacher.shape:
        raise ValueError(f"gram loss: student features {tuple(student.shape)} and teacher features "
                         f"{tuple(teacher.shape)} differ in shape")
    if img_level and student.ndim != 3:
        raise ValueError("per-image Gram matrices need (images, tokens, D) features, "
                         f"got {tuple(student.shape)}")
    if remove_neg and remove_only_teacher_neg:
        raise ValueError("gram: remove_neg and remove_only_teacher_neg exclude each other; set one")
    s, t = student.float(), teacher.float()
    if normalized:
        s, t = F.normalize(s, dim=-1), F.normalize(t, dim=-1)
    if not img_level and s.ndim == 3:
        s, t = s.flatten(0, 1), t.flatten(0, 1)
    sim_s, sim_t = s @ s.transpose(-1, -2), t @ t.transpose(-1, -2)
    if remove_neg or remove_only_teacher_neg:
        sim_t = torch.where(sim_t < 0, 0.0, sim_t)
    if remove_neg:
        sim_s = torch.where(sim_s < 0, 0.0, sim_s)
    return F.mse_loss(sim_s, sim_t)


def gram_anchoring_loss(student_patches: torch.Tensor, teacher_patches: torch.Tensor,
                        masks: torch.Tensor | None, options: GramOptions) -> torch.Tensor:
    """The Gram term of the total loss: token selection, then :func:`gram_loss` with ``options``.

    ``teacher_patches`` are already on the student's grid (:func:`resize_patch_features`).
    """
    student, teacher = select_tokens(student_patches, teacher_patches, masks, options.tokens_used)
    return gram_loss(student, teacher, normalized=options.normalized, img_level=options.img_level,
                     remove_neg=options.remove_neg, remove_only_teacher_neg=options.remove_only_teacher_neg)


def gram_stats(student_patches: torch.Tensor, teacher_patches: torch.Tensor, masks: torch.Tensor,
               options: GramOptions) -> dict[str, torch.Tensor]:
    """The official ``gram.compute_stats`` losses (no gradient): batch-level Gram losses over the masked
    and over the unmasked patches, with the other ``options``."""
    stats = {}
    selections: tuple[GramTokens, ...] = ("masked", "unmasked")
    with torch.no_grad():
        for tokens in selections:
            student, teacher = select_tokens(student_patches.detach(), teacher_patches, masks, tokens)
            stats[f"stats_only/{tokens}_gram_loss"] = gram_loss(
                student, teacher, normalized=options.normalized, img_level=False,
                remove_neg=options.remove_neg, remove_only_teacher_neg=options.remove_only_teacher_neg)
    return stats
