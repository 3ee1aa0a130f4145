"""The DINOv2 loss with its state: the teacher targets (softmax centring or Sinkhorn-Knopp) of the CLS
tokens and of the masked patches, the EMA centres, and the weighted sum of the terms.

The centres are buffers (``dino_center`` (1, K), ``ibot_center`` (1, 1, K), as the official loss modules
hold them) and are updated right after this step's targets are computed: the buffer then holds the centre
the next step uses, which the official code applies lazily at the start of the next step (its stored buffer
lags one step; the targets are the same).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
from torch import nn

from dinofeat.training.objectives.dinov2.centering import (
    all_reduce_sum,
    batch_center,
    ema_center,
    sinkhorn_knopp,
    softmax_center,
)
from dinofeat.training.objectives.dinov2.losses import dino_terms, ibot_loss, koleo_loss

Centering = Literal["softmax", "sinkhorn_knopp"]


@dataclass(frozen=True)
class LossWeights:
    dino: float = 1.0
    koleo: float = 0.1
    ibot: float = 1.0


@dataclass
class LossTerms:
    """The official terms of one step: ``dino_local_crops_loss`` and ``dino_global_crops_loss`` (weighted
    and normalised), ``koleo`` and ``ibot`` as backpropagated, and their backpropagated sum ``total``."""

    dino_local: torch.Tensor
    dino_global: torch.Tensor
    koleo: torch.Tensor
    ibot: torch.Tensor
    total: torch.Tensor

    def reported(self) -> dict[str, float]:
        """The official ``loss_dict``: KoLeo and iBOT are reported at HALF of what is backpropagated."""
        return {"dino_local_crops_loss": self.dino_local.item(),
                "dino_global_crops_loss": self.dino_global.item(),
                "koleo_loss": self.koleo.item() / 2, "ibot_loss": self.ibot.item() / 2}


class DinoV2Loss(nn.Module):
    """Targets and terms of the DINOv2 objective.

    Args:
        dino_out_dim: Prototypes of the DINO head.
        ibot_out_dim: Prototypes of the iBOT head (the DINO head's with a shared head).
        centering: ``"softmax"`` (EMA centre) or ``"sinkhorn_knopp"`` (3 iterations).
        weights: Loss weights.
        student_temp: Student temperature (0.1).
        center_momentum: Centre momentum (0.9).
    """

    dino_center: torch.Tensor
    ibot_center: torch.Tensor

    def __init__(self, dino_out_dim: int, ibot_out_dim: int, centering: Centering = "softmax",
                 weights: LossWeights = LossWeights(), student_temp: float = 0.1,
                 center_momentum: float = 0.9) -> None:
        super().__init__()
        self.centering = centering
        self.weights = weights
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("dino_center", torch.zeros(1, dino_out_dim))
        self.register_buffer("ibot_center", torch.zeros(1, 1, ibot_out_dim))

    @torch.no_grad()
    def dino_targets(self, teacher_logits: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """(2B, K) targets of the crop-swapped teacher CLS logits; updates the DINO centre."""
        if self.centering == "sinkhorn_knopp":
            return sinkhorn_knopp(teacher_logits, teacher_temp)
        targets = softmax_center(teacher_logits, self.dino_center, teacher_temp)
        new = ema_center(self.dino_center, batch_center(teacher_logits), self.center_momentum)
        self.dino_center.copy_(new)
        return targets

    @torch.no_grad()
    def ibot_targets(self, teacher_logits: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """(M, K) targets of the teacher's masked-patch logits; updates the iBOT centre."""
        n_masked = torch.tensor([len(teacher_logits)], device=teacher_logits.device)
        if self.centering == "sinkhorn_knopp":
            return sinkhorn_knopp(teacher_logits, teacher_temp, n_rows=n_masked)
        center = self.ibot_center.view(1, -1)
        targets = softmax_center(teacher_logits, center, teacher_temp)
        self._update_ibot_center(teacher_logits)
        return targets

    def _update_ibot_center(self, logits: torch.Tensor) -> None:
        """EMA with the mean over the ranks of each rank's mean masked-patch logits (the official mean of
        means); a rank without masked patches contributes nothing, and nothing changes if none has any."""
        has_rows = len(logits) > 0
        local = logits.mean(dim=0, keepdim=True) if has_rows else logits.new_zeros(1, logits.shape[1])
        if dist.is_available() and dist.is_initialized():
            ranks = all_reduce_sum(torch.tensor([float(has_rows)], device=logits.device))
            if float(ranks) == 0:
                return
            batch = all_reduce_sum(local) / ranks
        elif has_rows:
            batch = local
        else:
            return
        new = ema_center(self.ibot_center.view(1, -1), batch, self.center_momentum)
        self.ibot_center.copy_(new.view_as(self.ibot_center))

    def terms(self, cls_backbone: torch.Tensor, local_logits: torch.Tensor, global_logits: torch.Tensor,
              masked_logits: torch.Tensor, dino_targets: torch.Tensor, ibot_targets: torch.Tensor,
              masks_weight: torch.Tensor, n_local_crops: int) -> LossTerms:
        """Every term of the step and their backpropagated sum, in the official order of accumulation."""
        w = self.weights
        local, global_term = dino_terms(local_logits, global_logits, dino_targets, n_local_crops,
                                        self.student_temp)
        zero = torch.zeros((), device=local.device)
        koleo = w.koleo * sum((koleo_loss(rows) for rows in cls_backbone.chunk(2)), zero)
        ibot = ibot_loss(masked_logits, ibot_targets, masks_weight, len(cls_backbone), self.student_temp)
        total = torch.zeros((), device=local.device)
        if n_local_crops:
            total = total + w.dino * local
        total = total + w.dino * global_term
        if w.koleo:
            total = total + koleo
        if w.ibot:
            total = total + w.ibot * ibot
        return LossTerms(local, global_term, koleo, ibot, total)
