"""The DINOv2 student and teacher, and the per-iteration DINOv2 update.

:class:`DinoV2Step` is what the trainer calls once per iteration under ``objective.name=dinov2`` (and what the
golden tests call on the official inputs): lr / weight decay / last-layer lr from the per-iteration schedules
into the optimiser groups, the iBOT masks of the iteration, teacher targets (softmax centring or
Sinkhorn-Knopp), the student pass, DINO + KoLeo + iBOT losses, backward, gradient clipping per sub-module
(backbone, DINO head, iBOT head), AdamW, the EMA teacher.
"""

from __future__ import annotations

import random
from typing import cast

import numpy as np
import torch
from timm.layers.drop import DropPath
from torch import nn

from dinofeat.models import build_backbone, family_of
from dinofeat.models.family import with_training_fields
from dinofeat.models.vit.config import ViTConfig
from dinofeat.models.vit.model import DinoVisionTransformer
from dinofeat.training.config.train_config import TrainConfig, training_arch
from dinofeat.training.engine.collapse import target_stats
from dinofeat.training.engine.rng import MASK_STREAM, iteration_seed
from dinofeat.training.engine.step import NonFiniteLossError, autocast, resolve_precision, unwrap
from dinofeat.training.objectives.dino.head import DINOHead
from dinofeat.training.objectives.dinov2.loss import DinoV2Loss, LossWeights
from dinofeat.training.objectives.dinov2.masking import (
    BlockMasking,
    IbotMasks,
    draw_batch_masks,
    max_block_patches,
)
from dinofeat.training.objectives.dinov2.model import DinoV2Network, StudentOutputs, swap_crops
from dinofeat.training.objectives.dinov2.param_groups import apply_schedule, dinov2_param_groups
from dinofeat.training.objectives.dinov2.schedules import DinoV2Schedules, sqrt_scaled_lr
from dinofeat.training.objectives.ema import ema_update
from dinofeat.training.objectives.optim import build_optimizer


def dinov2_arch(cfg: TrainConfig) -> ViTConfig:
    """The teacher's ViT (no drop-path).

    Raises:
        ValueError: the backbone is not a ViT.
    """
    arch = training_arch(cfg)
    if not isinstance(arch, ViTConfig):
        raise ValueError(f"objective.name=dinov2 trains ViTs (it masks patch tokens); model.arch is a "
                         f"{family_of(arch).title}")
    return arch


def _network(cfg: TrainConfig, arch: ViTConfig, drop_path: float) -> DinoV2Network:
    backbone = build_backbone(with_training_fields(arch, family_of(arch), drop_path_rate=drop_path))
    assert isinstance(backbone, DinoVisionTransformer)
    backbone.add_mask_token()
    if cfg.model.drop_path_uniform and drop_path > 0:
        for block in backbone.blocks:
            block.drop_path1, block.drop_path2 = DropPath(drop_path), DropPath(drop_path)
    h, ob = cfg.head, cfg.objective
    dino_head = DINOHead(arch.embed_dim, h.out_dim, h.hidden_dim, h.bottleneck_dim, h.nlayers, h.use_bn,
                         h.norm_last_layer)
    ibot_head = None
    if ob.ibot_separate_head:
        ibot_head = DINOHead(arch.embed_dim, ob.ibot_out_dim or h.out_dim, ob.ibot_hidden_dim or h.hidden_dim,
                             ob.ibot_bottleneck_dim or h.bottleneck_dim, h.nlayers, h.use_bn,
                             h.norm_last_layer)
    return DinoV2Network(backbone, dino_head, ibot_head)


def build_dinov2_networks(cfg: TrainConfig) -> tuple[DinoV2Network, DinoV2Network, ViTConfig]:
    """Student (with drop-path) and teacher (without), identical weights; and the teacher's arch."""
    arch = dinov2_arch(cfg)
    student = _network(cfg, arch, cfg.model.drop_path_rate)
    teacher = _network(cfg, arch, 0.0)
    teacher.load_state_dict(student.state_dict(), strict=True)
    for param in teacher.parameters():
        param.requires_grad = False
    return student, teacher, arch


def dinov2_schedules(cfg: TrainConfig, iters_per_epoch: int, world_size: int) -> DinoV2Schedules:
    """The official schedules, ``optim.lr`` being the base lr of a total batch of 1024 (square-root rule)."""
    o, loss = cfg.optim, cfg.loss
    return DinoV2Schedules.build(
        lr=sqrt_scaled_lr(o.lr, o.batch_size_per_gpu, world_size), min_lr=o.min_lr, epochs=cfg.run.epochs,
        iters_per_epoch=iters_per_epoch, warmup_epochs=o.warmup_epochs, weight_decay=o.weight_decay,
        weight_decay_end=o.weight_decay_end, momentum=o.momentum_teacher, final_momentum=1.0,
        warmup_teacher_temp=loss.warmup_teacher_temp, teacher_temp=loss.teacher_temp,
        warmup_teacher_temp_epochs=loss.warmup_teacher_temp_epochs,
        freeze_last_layer_epochs=o.freeze_last_layer)


class MaskSampler:
    """The iBOT masks of an iteration, drawn by the official rules from a stream of the run's position."""

    def __init__(self, cfg: TrainConfig, patch_size: int, rank: int = 0) -> None:
        size = cfg.crops.global_size
        grid = (size // patch_size, size // patch_size)
        self.generator = BlockMasking(grid, max_block_patches(size, patch_size))
        self.probability, self.ratio = cfg.objective.mask_probability, cfg.objective.mask_ratio
        self.seed, self.rank = cfg.run.seed, rank

    def __call__(self, it: int, n_images: int) -> IbotMasks:
        rng = random.Random(iteration_seed(self.seed, it, self.rank, MASK_STREAM))
        return draw_batch_masks(n_images, self.generator, self.probability, self.ratio, rng)


class DinoV2Step:
    """One DINOv2 training iteration over student, teacher, loss centres, optimiser and scaler.

    Args:
        cfg: Training configuration (``objective.name=dinov2``).
        student: Student network (possibly DDP-wrapped).
        teacher: Teacher network (no gradients).
        schedules: Per-iteration schedules (:func:`dinov2_schedules`).
        device: Training device.
        rank: This process's rank (its own mask stream).
        freeze_backbone_iters: Iterations at the start with the backbone's lr at 0.
    """

    def __init__(self, cfg: TrainConfig, student: nn.Module, teacher: nn.Module, schedules: DinoV2Schedules,
                 device: torch.device, rank: int = 0, freeze_backbone_iters: int = 0) -> None:
        self.cfg, self.student, self.teacher = cfg, student, teacher
        self.schedules, self.device = schedules, device
        self.freeze_backbone_iters = freeze_backbone_iters
        network = cast(DinoV2Network, unwrap(student))
        ob, loss_cfg = cfg.objective, cfg.loss
        ibot_dim = ob.ibot_out_dim if ob.ibot_separate_head and ob.ibot_out_dim else cfg.head.out_dim
        self.loss_fn = DinoV2Loss(cfg.head.out_dim, ibot_dim, ob.centering,
                                  LossWeights(ob.dino_weight, ob.koleo_weight, ob.ibot_weight),
                                  loss_cfg.student_temp, loss_cfg.center_momentum).to(device)
        layer_of = family_of(network.backbone.config).layer_of_parameter
        assert layer_of is not None
        self.parts = network.parts()
        groups = dinov2_param_groups(self.parts, network.backbone.depth, cfg.optim.layer_decay,
                                     cfg.optim.patch_embed_lr_mult, layer_of)
        self.optimizer = build_optimizer(cfg.optim.optimizer, groups)  # AdamW in the official recipe
        self.precision = resolve_precision(cfg.run.precision, device)
        self.scaler = torch.amp.GradScaler(device.type) if self.precision == "fp16" else None
        self.masks = MaskSampler(cfg, network.backbone.patch_size, rank)

    def _set_lr(self, it: int) -> dict[str, float]:
        s = self.schedules
        values = {"lr": s.lr[it], "wd": s.wd[it], "momentum": s.momentum[it],
                  "teacher_temp": s.teacher_temp[it],
                  "last_layer_lr": s.last_layer_lr[it]}
        apply_schedule(self.optimizer.param_groups, values["lr"], values["wd"], values["last_layer_lr"])
        if it < self.freeze_backbone_iters:
            for group in self.optimizer.param_groups:
                if group["is_backbone"]:
                    group["lr"] = 0.0
        return values

    def __call__(self, crops: list[torch.Tensor], it: int, epoch: int,
                 masks: IbotMasks | None = None) -> dict[str, float]:
        """Run global iteration ``it`` on a list of crop batches (2 global, then the local ones).

        Args:
            crops: (B, C, H, W) batches, global crop 0, global crop 1, local crops.
            it: Global iteration (the schedules' index).
            epoch: Epoch (for the record).
            masks: The iteration's iBOT masks; drawn from the run's mask stream when None.

        Raises:
            NonFiniteLossError: before any parameter changes, if the loss is not finite.
        """
        values = self._set_lr(it)
        crops = [c.to(self.device, non_blocking=True) for c in crops]
        global_crops = torch.cat(crops[:2])
        local_crops = torch.cat(crops[2:]) if len(crops) > 2 else None
        if masks is None:
            masks = self.masks(it, len(global_crops))
        mask_rows = masks.masks.to(self.device)
        indices, weights = masks.indices().to(self.device), masks.weights().to(self.device)
        temp = values["teacher_temp"]
        with autocast(self.precision, self.device):
            with torch.no_grad():
                teacher_cls, teacher_masked = self.teacher(global_crops, None, None, indices,
                                                           masks.upperbound)
                dino_targets = self.loss_fn.dino_targets(teacher_cls, temp)
                ibot_targets = self.loss_fn.ibot_targets(teacher_masked, temp)
            outputs: StudentOutputs = self.student(global_crops, local_crops, mask_rows, indices,
                                                   masks.upperbound)
            terms = self.loss_fn.terms(*outputs, dino_targets, ibot_targets, weights,
                                       len(crops) - 2)
        loss_value = terms.total.item()
        if not np.isfinite(loss_value):
            raise NonFiniteLossError(
                f"loss is {loss_value} at iteration {it} (epoch {epoch}); stopping. The last checkpoint is "
                "intact. Try run.precision=fp32 or bf16, a lower optim.lr, or objective.centering=softmax "
                "(Sinkhorn-Knopp overflows when a teacher logit / temperature exceeds 88).")
        self._backward_and_step(terms.total)
        ema_update(self.teacher, unwrap(self.student), values["momentum"], alpha_form=True)
        stats = self._stats(outputs, dino_targets, ibot_targets)
        return {"loss": loss_value, **terms.reported(), **values, "n_masked": float(len(indices)), **stats}

    def _stats(self, outputs: StudentOutputs, dino_targets: torch.Tensor, ibot_targets: torch.Tensor,
               ) -> dict[str, float]:
        center = self.loss_fn.dino_center if self.loss_fn.centering == "softmax" else None
        temp = self.loss_fn.student_temp
        stats = target_stats(dino_targets, swap_crops(outputs[2].detach()), temp, center)
        if len(ibot_targets):
            stats.update(target_stats(ibot_targets, outputs[3].detach(), temp, prefix="patch_"))
        return stats

    def _backward_and_step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            torch.autograd.backward(self.scaler.scale(loss))
            self.scaler.unscale_(self.optimizer)
        else:
            torch.autograd.backward(loss)
        clip = self.cfg.optim.clip_grad
        if clip:
            for part in self.parts.values():
                torch.nn.utils.clip_grad_norm_(part.parameters(), clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()

