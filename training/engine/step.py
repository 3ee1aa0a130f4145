"""Student/teacher construction and the per-iteration DINO update.

:class:`DinoStep` is what the trainer calls once per iteration (and what the golden parity
test calls on fixed crops): set lr / weight decay from the schedules, forward teacher and
student, DINO loss with centre update, backward, per-tensor clipping, last-layer freezing,
optimiser step, EMA teacher update.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dinofeat.models import ArchConfig, build_backbone, family_of
from dinofeat.models.family import with_training_fields
from dinofeat.training.config.train_config import TrainConfig, training_arch
from dinofeat.training.engine.collapse import collapse_stats
from dinofeat.training.engine.init_weights import layer_decay_param_groups
from dinofeat.training.objectives.dino.head import DINOHead
from dinofeat.training.objectives.dino.loss import DINOLoss
from dinofeat.training.objectives.ema import ema_update
from dinofeat.training.objectives.multicrop import MultiCropWrapper
from dinofeat.training.objectives.optim import (
    build_optimizer,
    cancel_last_layer_gradients,
    clip_gradients_per_param,
    param_groups,
)
from dinofeat.training.objectives.schedules import cosine_schedule, teacher_temp_schedule
from dinofeat.utils.errors import DinofeatError


class NonFiniteLossError(DinofeatError, RuntimeError):
    """The loss became NaN or infinite; no parameter was updated in that iteration."""


@dataclass
class Schedules:
    """Per-iteration lr / weight decay / teacher momentum, per-epoch teacher temperature."""

    lr: np.ndarray
    wd: np.ndarray
    momentum: np.ndarray
    teacher_temp: np.ndarray

    @classmethod
    def from_config(cls, cfg: TrainConfig, niter_per_ep: int, world_size: int) -> Schedules:
        o, epochs = cfg.optim, cfg.run.epochs
        peak_lr = o.lr * o.batch_size_per_gpu * world_size / 256.0
        return cls(
            lr=cosine_schedule(peak_lr, o.min_lr, epochs, niter_per_ep, warmup_epochs=o.warmup_epochs),
            wd=cosine_schedule(o.weight_decay, o.weight_decay_end, epochs, niter_per_ep),
            momentum=cosine_schedule(o.momentum_teacher, 1.0, epochs, niter_per_ep),
            teacher_temp=teacher_temp_schedule(cfg.loss.warmup_teacher_temp, cfg.loss.teacher_temp,
                                               cfg.loss.warmup_teacher_temp_epochs, epochs),
        )


def build_student_teacher(cfg: TrainConfig) -> tuple[MultiCropWrapper, MultiCropWrapper, ArchConfig]:
    """Student (with drop-path) and teacher (without) of the same architecture, identical weights.

    Returns:
        (student, teacher, arch of the teacher backbone, i.e. without drop-path).
    """
    arch = training_arch(cfg)
    family = family_of(arch)
    student_arch = with_training_fields(arch, family, drop_path_rate=cfg.model.drop_path_rate)
    arch = with_training_fields(arch, family, drop_path_rate=0.0)
    h = cfg.head

    def head(norm_last_layer: bool) -> DINOHead:
        return DINOHead(arch.embed_dim, h.out_dim, h.hidden_dim, h.bottleneck_dim, h.nlayers, h.use_bn,
                        norm_last_layer)

    student = MultiCropWrapper(build_backbone(student_arch), head(h.norm_last_layer))
    # Official: the teacher head is built with norm_last_layer True, then overwritten by the student.
    teacher = MultiCropWrapper(build_backbone(arch), head(True))
    teacher.load_state_dict(student.state_dict(), strict=True)
    for param in teacher.parameters():
        param.requires_grad = False
    return student, teacher, arch


def training_param_groups(cfg: TrainConfig, model: nn.Module) -> list[dict[str, Any]]:
    """The official two groups, or layer-decayed groups when ``optim.layer_decay`` or
    ``optim.patch_embed_lr_mult`` is below 1.

    Raises:
        ValueError: layer-wise settings for a family without blocks (a CNN).
    """
    o = cfg.optim
    if (o.layer_decay, o.patch_embed_lr_mult) == (1.0, 1.0):
        return param_groups(model)
    family = family_of(training_arch(cfg))
    if family.layer_of_parameter is None:
        raise ValueError(f"optim.layer_decay / optim.patch_embed_lr_mult need a backbone of blocks; "
                         f"{family.title} has none")
    backbone: Any = model.backbone
    return layer_decay_param_groups(model, backbone.depth, o.layer_decay, o.patch_embed_lr_mult,
                                    family.layer_of_parameter)


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, DistributedDataParallel) else module


class DinoStep:
    """One DINO training iteration over student, teacher, loss centre, optimiser and scaler.

    Args:
        cfg: Training configuration.
        student: Student wrapper (possibly DDP-wrapped).
        teacher: Teacher wrapper (never DDP-wrapped; no gradients).
        schedules: Precomputed schedules.
        device: Training device.
    """

    def __init__(self, cfg: TrainConfig, student: nn.Module, teacher: nn.Module, schedules: Schedules,
                 device: torch.device) -> None:
        self.cfg = cfg
        self.student, self.teacher = student, teacher
        self.schedules = schedules
        self.device = device
        n_crops = 2 + cfg.crops.local_crops_number
        loss_cfg = cfg.loss
        self.loss_fn = DINOLoss(cfg.head.out_dim, n_crops, loss_cfg.student_temp, loss_cfg.center_momentum)
        self.loss_fn.to(device)
        self.optimizer = build_optimizer(cfg.optim.optimizer, training_param_groups(cfg, unwrap(student)))
        self.precision = resolve_precision(cfg.run.precision, device)
        self.scaler = torch.amp.GradScaler(device.type) if self.precision == "fp16" else None

    def __call__(self, crops: list[torch.Tensor], it: int, epoch: int) -> dict[str, float]:
        """Run global iteration ``it`` (of epoch ``epoch``) on a list of crop batches.

        Returns:
            ``loss``, ``lr``, ``wd``, ``momentum``, ``teacher_temp`` of this iteration, and the collapse
            guard's statistics (:func:`~dinofeat.training.engine.collapse.collapse_stats`).

        Raises:
            NonFiniteLossError: before any parameter changes, if the loss is not finite.
        """
        s = self.schedules
        lr, wd, momentum = float(s.lr[it]), float(s.wd[it]), float(s.momentum[it])
        temp = float(s.teacher_temp[epoch])
        for index, group in enumerate(self.optimizer.param_groups):
            group["lr"] = lr * group.get("lr_mult", 1.0)
            if group.get("apply_wd", index == 0):  # only regularised groups get weight decay
                group["weight_decay"] = wd
        crops = [c.to(self.device, non_blocking=True) for c in crops]
        with autocast(self.precision, self.device):
            teacher_out = self.teacher(crops[:2])
            student_out = self.student(crops)
            stats = collapse_stats(teacher_out, student_out, self.loss_fn.center, temp,
                                   self.cfg.loss.student_temp)
            loss = self.loss_fn(student_out, teacher_out, teacher_temp=temp)
        loss_value = loss.item()
        if not np.isfinite(loss_value):
            raise NonFiniteLossError(
                f"loss is {loss_value} at iteration {it} (epoch {epoch}); stopping. The last checkpoint "
                "is intact. Try run.precision=fp32 or bf16, a lower optim.lr, or a smaller head.out_dim."
            )
        self._backward_and_step(loss, epoch)
        ema_update(self.teacher, unwrap(self.student), momentum)
        return {"loss": loss_value, "lr": lr, "wd": wd, "momentum": momentum, "teacher_temp": temp, **stats}

    def _backward_and_step(self, loss: torch.Tensor, epoch: int) -> None:
        o = self.cfg.optim
        self.optimizer.zero_grad()
        if self.scaler is not None:
            torch.autograd.backward(self.scaler.scale(loss))
            self.scaler.unscale_(self.optimizer)
        else:
            torch.autograd.backward(loss)
        if o.clip_grad:
            clip_gradients_per_param(self.student, o.clip_grad)
        cancel_last_layer_gradients(self.student, epoch, o.freeze_last_layer)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()


def autocast(precision: str, device: torch.device) -> Any:
    """The forward's autocast context of a resolved precision (none for fp32)."""
    if precision == "fp32":
        return nullcontext()
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype)


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if precision not in {"fp32", "fp16", "bf16"}:
        raise ValueError(f"run.precision must be auto, fp32, fp16 or bf16, got {precision!r}")
    return precision
