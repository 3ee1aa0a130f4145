"""The objective chosen by ``objective.name``: its networks, step and collapse guards, for the trainer.

``dino`` (the default) builds :class:`~dinofeat.training.objectives.multicrop.MultiCropWrapper` networks and
:class:`~dinofeat.training.engine.step.DinoStep`; ``dinov2`` builds
:class:`~dinofeat.training.objectives.dinov2.model.DinoV2Network` networks and
:class:`~dinofeat.training.engine.dinov2_step.DinoV2Step`, and adds a guard on the iBOT patch targets.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from dinofeat.models import ArchConfig
from dinofeat.training.config.train_config import TrainConfig
from dinofeat.training.engine.collapse import CollapseDetector
from dinofeat.training.engine.dinov2_step import DinoV2Step, build_dinov2_networks, dinov2_schedules
from dinofeat.training.engine.step import DinoStep, Schedules, build_student_teacher
from dinofeat.utils.distributed import DistInfo

Step = DinoStep | DinoV2Step

# Settings that change the networks of a dinov2 run (a resumed run must have the same).
NETWORK_OBJECTIVE_KEYS = ("name", "ibot_separate_head", "ibot_out_dim", "ibot_hidden_dim",
                          "ibot_bottleneck_dim")


def is_dinov2(cfg: TrainConfig) -> bool:
    return cfg.objective.name == "dinov2"


def build_networks(cfg: TrainConfig) -> tuple[nn.Module, nn.Module, ArchConfig]:
    """(student, teacher, the teacher backbone's arch) of the objective, identical weights."""
    if is_dinov2(cfg):
        return build_dinov2_networks(cfg)
    return build_student_teacher(cfg)


def build_step(cfg: TrainConfig, student: nn.Module, teacher: nn.Module, iters_per_epoch: int,
               dist: DistInfo) -> Step:
    """The objective's per-iteration update, with its schedules for ``iters_per_epoch``."""
    if is_dinov2(cfg):
        schedules = dinov2_schedules(cfg, iters_per_epoch, dist.world_size)
        frozen = cfg.objective.freeze_backbone_epochs * iters_per_epoch
        return DinoV2Step(cfg, student, teacher, schedules, dist.device, dist.rank, frozen)
    return DinoStep(cfg, student, teacher, Schedules.from_config(cfg, iters_per_epoch, dist.world_size),
                    dist.device)


def collapse_detectors(cfg: TrainConfig, window: int) -> list[CollapseDetector]:
    """The guard of the CLS targets, and for dinov2 that of the masked-patch targets."""
    patience = cfg.run.collapse_patience
    detectors = [CollapseDetector(cfg.head.out_dim, window, patience)]
    if is_dinov2(cfg):
        ob = cfg.objective
        out_dim = ob.ibot_out_dim if ob.ibot_separate_head and ob.ibot_out_dim else cfg.head.out_dim
        detectors.append(CollapseDetector(out_dim, window, patience, prefix="patch_"))
    return detectors


def load_loss_state(step: Step, state: dict[str, Any]) -> None:
    """Restore the centres of a checkpoint's ``dino_loss`` entry (an official DINO checkpoint's too)."""
    if isinstance(step, DinoV2Step):
        step.loss_fn.load_state_dict(state, strict=True)
    else:
        step.loss_fn.load_state_dict({"center": state["center"]}, strict=True)


def objective_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The network-shaping objective settings of config dict ``current`` that differ from ``saved`` (a
    checkpoint's); a config written before objectives existed was DINO's."""
    before = saved.get("objective", {"name": "dino"})
    now = current["objective"]
    return [f"objective.{key}: {before[key]!r} there, {now[key]!r} now" for key in NETWORK_OBJECTIVE_KEYS
            if key in before and before[key] != now[key]]

