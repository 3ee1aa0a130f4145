"""How the DINOv3 loss terms add up to the total, with the local-loss reweighting.

Facts from the official DINOv3 meta arch (formulas only), with ``T_g`` global and ``T_l`` local DINO
terms (``T_g = n_g (n_g - 1)`` when the global loss ignores the same-crop pairs, else ``n_g^2``;
``T_l = n_g n_l``)::

    total = w_dino T_l / (T_g + T_l) w_local(it) L_local + w_dino T_g / (T_g + T_l) L_global
            + w_koleo n_g L_koleo + w_ibot L_ibot + w_gram(it) L_gram

where ``L_koleo`` is the mean of the per-crop KoLeo losses of the ``n_g`` global crops. With
``w_local = 1`` and no Gram term this is DINOv2's combination; unlike DINOv2, DINOv3 logs the unscaled
terms. The terms themselves (DINO CLS losses with Sinkhorn-Knopp targets, iBOT, KoLeo, Gram) are computed
elsewhere and passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LossWeights:
    """The constant weights of the official config (``dino.loss_weight``, ``dino.koleo_loss_weight``,
    ``ibot.loss_weight``) and whether the global DINO loss skips the same-crop pairs
    (``dino.global_ignore_diagonal``)."""

    dino: float = 1.0
    koleo: float = 0.1
    ibot: float = 1.0
    global_ignore_diagonal: bool = True


def dino_term_scales(n_global: int, n_local: int, ignore_diagonal: bool) -> tuple[float, float]:
    """(global scale, local scale): each DINO loss's share ``T / (T_g + T_l)`` of the DINO weight.

    Example:
        >>> dino_term_scales(2, 8, True)
        (0.1111111111111111, 0.8888888888888888)
    """
    if n_global < 1 or n_local < 0:
        raise ValueError(f"need at least one global crop and no negative count, got {n_global} global, "
                         f"{n_local} local")
    global_terms = n_global * (n_global - 1) if ignore_diagonal else n_global**2
    local_terms = n_global * n_local
    if global_terms + local_terms == 0:
        raise ValueError("no DINO loss term: one global crop with the diagonal ignored and no local crop")
    return global_terms / (global_terms + local_terms), local_terms / (global_terms + local_terms)


def combine_losses(*, dino_global: torch.Tensor, dino_local: torch.Tensor | None, koleo: torch.Tensor,
                   ibot: torch.Tensor, n_global: int, n_local: int, weights: LossWeights,
                   local_weight: float = 1.0, gram: torch.Tensor | None = None,
                   gram_weight: float = 0.0) -> torch.Tensor:
    """The official total loss from its terms (each a scalar tensor; gradients flow through all of them).

    Args:
        dino_global: DINO loss of the student's global crops against the teacher's.
        dino_local: DINO loss of the local crops against the teacher's global crops; None without local
            crops.
        koleo: Mean over the global crops of each crop's KoLeo loss.
        ibot: iBOT masked-patch loss.
        n_global, n_local: Crops per image.
        weights: The constant weights.
        local_weight: ``w_local(it)``, the local-loss reweighting (1 when the config has none).
        gram: Gram anchoring loss, or None when the run has none.
        gram_weight: ``w_gram(it)``.
    """
    global_scale, local_scale = dino_term_scales(n_global, n_local, weights.global_ignore_diagonal)
    total = weights.dino * global_scale * dino_global
    if dino_local is not None:
        total = weights.dino * local_scale * local_weight * dino_local + total
    elif n_local:
        raise ValueError(f"{n_local} local crops but no local DINO loss")
    total = total + weights.koleo * n_global * koleo + weights.ibot * ibot
    if gram is not None:
        total = total + gram * gram_weight
    return total
