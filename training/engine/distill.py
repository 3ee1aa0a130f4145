"""Distillation of a frozen teacher backbone into a smaller student (``dinofeat-train distill``).

As DINOv2 / DINOv3 make their small models from a large one: the teacher (a zoo name or a model
folder) is frozen; the student sees the same multi-crop views and learns the teacher's CLS token
and patch tokens on every crop, through linear projections to the teacher's width (identity when
the widths agree). The targets are centred by an EMA of their mean (``loss.center_momentum``); the
loss is 1 - cosine similarity, averaged over CLS and over patch tokens; when the patch grids differ
the teacher's token map is resampled (bilinear) to the student's.

The checkpoint has the trainer's format (``export_key`` = ``"student"``), so ``dinofeat-train
export`` writes the student backbone as usual.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from dinofeat.hub.format import load_state_dict_strict
from dinofeat.hub.loading import load
from dinofeat.models import Backbone, build_backbone, family_of
from dinofeat.models.family import with_training_fields
from dinofeat.training.config.checks import check_config
from dinofeat.training.config.train_config import TrainConfig, training_arch
from dinofeat.training.data.augment import normalize_crops
from dinofeat.training.data.images import EpochSampler, collate_crops
from dinofeat.training.engine.checkpoint import (
    CHECKPOINT_NAME,
    atomic_save,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
)
from dinofeat.training.engine.metrics import MetricsWriter
from dinofeat.training.objectives.optim import build_optimizer, clip_gradients_per_param, param_groups
from dinofeat.training.objectives.schedules import cosine_schedule
from dinofeat.utils.devices import auto_device, require_device

_log = logging.getLogger("dinofeat.training")


def token_distillation_loss(student_cls: torch.Tensor, student_patches: torch.Tensor,
                            teacher_cls: torch.Tensor, teacher_patches: torch.Tensor) -> torch.Tensor:
    """Mean of (1 - cos) over CLS tokens plus mean of (1 - cos) over patch tokens.

    Args:
        student_cls: (B, D) projected student CLS tokens.
        student_patches: (B, h, w, D) projected student patch tokens.
        teacher_cls: (B, D).
        teacher_patches: (B, h', w', D); resampled to (h, w) when the grids differ.

    Example:
        >>> t = torch.randn(2, 4)
        >>> float(token_distillation_loss(t, t[:, None, None], t, t[:, None, None])) < 1e-6
        True
    """
    if teacher_patches.shape[1:3] != student_patches.shape[1:3]:
        grid = teacher_patches.permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=student_patches.shape[1:3], mode="bilinear", align_corners=False)
        teacher_patches = grid.permute(0, 2, 3, 1)
    cls_term = 1 - F.cosine_similarity(student_cls, teacher_cls, dim=-1).mean()
    patch_term = 1 - F.cosine_similarity(student_patches, teacher_patches, dim=-1).mean()
    return cls_term + patch_term


class DistillStudent(nn.Module):
    """Student backbone + projections of its CLS and patch tokens to the teacher's width, and the EMA
    centres of the teacher's CLS and patch tokens (buffers, saved with the student)."""

    center_cls: torch.Tensor
    center_patch: torch.Tensor

    def __init__(self, backbone: Backbone, teacher_dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        dim = backbone.config.embed_dim
        self.proj_cls: nn.Module = nn.Identity() if dim == teacher_dim else nn.Linear(dim, teacher_dim)
        self.proj_patch: nn.Module = nn.Identity() if dim == teacher_dim else nn.Linear(dim, teacher_dim)
        self.register_buffer("center_cls", torch.zeros(teacher_dim))
        self.register_buffer("center_patch", torch.zeros(teacher_dim))

    @torch.no_grad()
    def centred_targets(self, cls: torch.Tensor, patches: torch.Tensor, momentum: float
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher tokens minus the EMA of their mean, then the EMA update (as DINO centres its teacher).

        A random or pretrained ViT's tokens share one large common direction; without centring the
        cosine loss is spent on it and the student learns little of what tells images apart.
        """
        targets = cls - self.center_cls, patches - self.center_patch
        self.center_cls.mul_(momentum).add_(cls.mean(dim=0), alpha=1 - momentum)
        self.center_patch.mul_(momentum).add_(patches.mean(dim=(0, 1, 2)), alpha=1 - momentum)
        return targets

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.backbone.forward_tokens(x)
        h, w = out.grid
        patches = out.patches.reshape(x.shape[0], h, w, -1)
        return self.proj_cls(out.cls), self.proj_patch(patches)


def _teacher_backbone(source: str, device: torch.device) -> Backbone:
    backbone = load(source, device=device).backbone
    for param in backbone.parameters():
        param.requires_grad = False
    return backbone.eval()


class Distiller:
    """The distillation loop: data and crops as :class:`~dinofeat.training.engine.trainer.Trainer`, single
    process.

    Args:
        cfg: ``model.arch`` is the student, ``model.distill_teacher`` the teacher (zoo name or folder);
            optim / crops / data / run as for training (the head and loss sections are unused).
    """

    def __init__(self, cfg: TrainConfig) -> None:
        from dinofeat.training.engine.trainer import _seed_everything, build_dataset

        self.cfg = check_config(cfg)
        if cfg.model.distill_teacher is None:
            raise ValueError("distillation needs model.distill_teacher (--teacher): a zoo name or folder")
        self.device = auto_device() if cfg.run.device == "auto" else require_device(cfg.run.device)
        self.output_dir = Path(cfg.run.output_dir)
        _seed_everything(cfg.run.seed)
        self.teacher = _teacher_backbone(cfg.model.distill_teacher, self.device)
        teacher_channels = getattr(self.teacher.config, "in_chans", 3)
        if teacher_channels != (cfg.data.channels or 3):
            raise ValueError(f"the teacher takes {teacher_channels} channels, the data has "
                             f"{cfg.data.channels or 3} (data.channels)")
        arch = training_arch(cfg)
        backbone = build_backbone(with_training_fields(arch, family_of(arch),
                                                       drop_path_rate=cfg.model.drop_path_rate))
        self.student = DistillStudent(backbone, self.teacher.config.embed_dim).to(self.device)
        self.dataset = build_dataset(cfg)
        self.sampler = EpochSampler(self.dataset, num_replicas=1, rank=0, shuffle=True, seed=cfg.run.seed,
                                    drop_last=True)
        self.loader = DataLoader(self.dataset, batch_size=cfg.optim.batch_size_per_gpu, sampler=self.sampler,
                                 num_workers=cfg.data.num_workers, drop_last=True, collate_fn=collate_crops)
        self.iters_per_epoch = min(len(self.loader), cfg.run.max_iters_per_epoch or len(self.loader))
        if self.iters_per_epoch == 0:
            raise ValueError(
                f"{len(self.dataset)} images give no full batch of {cfg.optim.batch_size_per_gpu}")
        o, epochs = cfg.optim, cfg.run.epochs
        peak = o.lr * o.batch_size_per_gpu / 256.0
        self.lr = cosine_schedule(peak, o.min_lr, epochs, self.iters_per_epoch, warmup_epochs=o.warmup_epochs)
        self.wd = cosine_schedule(o.weight_decay, o.weight_decay_end, epochs, self.iters_per_epoch)
        self.optimizer = build_optimizer(o.optimizer, param_groups(self.student))
        self.metrics = MetricsWriter(self.output_dir, enabled=True)
        self.start_epoch = 0
        checkpoint = self.output_dir / CHECKPOINT_NAME
        if cfg.run.resume is not None and (cfg.run.resume != "auto" or checkpoint.is_file()):
            self._load(Path(checkpoint if cfg.run.resume == "auto" else cfg.run.resume))

    def _load(self, path: Path) -> None:
        ckpt = load_checkpoint(path)
        if ckpt.get("export_key") != "student":
            raise ValueError(f"{path} is not a distillation checkpoint")
        load_state_dict_strict(self.student, ckpt["student"], origin=str(path))
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.start_epoch = int(ckpt["epoch"])
        restore_rng_state(ckpt["rng"])

    def _save(self, next_epoch: int) -> None:
        state = {"format": "dinofeat-train", "export_key": "student", "student": self.student.state_dict(),
                 "optimizer": self.optimizer.state_dict(), "epoch": next_epoch, "rng": capture_rng_state(),
                 "config": self.cfg.to_json()}
        atomic_save(state, self.output_dir / CHECKPOINT_NAME, config_text=self.cfg.to_json())

    def step(self, crops: list[torch.Tensor], it: int) -> float:
        """One iteration over all crops of a batch; returns the loss."""
        for index, group in enumerate(self.optimizer.param_groups):
            group["lr"] = float(self.lr[it])
            if index == 0:
                group["weight_decay"] = float(self.wd[it])
        total = torch.zeros((), device=self.device)
        for crop in normalize_crops(crops, self.device):
            with torch.no_grad():
                out = self.teacher.forward_tokens(crop)
                h, w = out.grid
                teacher_patches = out.patches.reshape(crop.shape[0], h, w, -1)
                target_cls, target_patches = self.student.centred_targets(
                    out.cls, teacher_patches, self.cfg.loss.center_momentum)
            student_cls, student_patches = self.student(crop)
            total = total + token_distillation_loss(student_cls, student_patches, target_cls, target_patches)
        loss = total / len(crops)
        self.optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        if self.cfg.optim.clip_grad:
            clip_gradients_per_param(self.student, self.cfg.optim.clip_grad)
        self.optimizer.step()
        return float(loss.item())

    def fit(self) -> dict[str, Any]:
        """Distil from ``start_epoch`` to ``run.epochs``; a checkpoint after every epoch."""
        summary: dict[str, Any] = {}
        for epoch in range(self.start_epoch, self.cfg.run.epochs):
            self.sampler.set_epoch(epoch)
            self.student.train()
            losses, start = [], time.perf_counter()
            for index, (crops, _) in enumerate(self.loader):
                if index >= self.iters_per_epoch:
                    break
                it = epoch * self.iters_per_epoch + index
                losses.append(self.step(crops, it))
                self.metrics.write({"epoch": epoch, "iteration": it, "loss": losses[-1],
                                    "lr": float(self.lr[it])})
            summary = {"epoch": epoch, "loss": float(np.mean(losses)),
                       "epoch_time": time.perf_counter() - start}
            self.metrics.write({"epoch_summary": summary})
            _log.info("distill epoch %d | loss %.4f | %.1fs", epoch, summary["loss"], summary["epoch_time"])
            self._save(epoch + 1)
        return summary
