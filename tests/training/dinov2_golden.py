"""Reading the official DINOv2 training goldens (``../shared/golden/dinov2_train/<config>/``): the folder
from ``DINOFEAT_GOLDEN_DINOV2_TRAIN``, every config folder with a ``golden.json``, and the dinofeat training
configuration each one stands for (sizes and settings read from the files, none assumed)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from dinofeat.training.config.train_config import TrainConfig, apply_overrides
from dinofeat.training.objectives.dinov2.masking import IbotMasks
from dinofeat.training.objectives.dinov2.model import official_network_keys
from tests.helpers.common import SHARED


def golden_root() -> Path:
    return Path(os.environ.get("DINOFEAT_GOLDEN_DINOV2_TRAIN", str(SHARED / "golden" / "dinov2_train")))


def golden_configs() -> list[Any]:
    """One pytest param per config folder with a golden.json (a skip with the reason when there is none)."""
    root = golden_root()
    folders = sorted(p.parent for p in root.glob("*/golden.json")) if root.is_dir() else []
    if not folders:
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"needs DINOv2 training goldens in {root}"))]
    return [pytest.param(folder, id=folder.name) for folder in folders]


@dataclass
class Golden:
    folder: Path
    meta: dict[str, Any]
    inputs: dict[str, torch.Tensor]
    init: dict[str, torch.Tensor]
    final: dict[str, torch.Tensor]
    intermediates: dict[str, torch.Tensor]

    @classmethod
    def load(cls, folder: Path) -> Golden:
        def tensors(name: str) -> dict[str, torch.Tensor]:
            return load_file(str(folder / f"{name}.safetensors"))

        return cls(folder, json.loads((folder / "golden.json").read_text()), tensors("inputs"),
                   tensors("state_init"), tensors("state_final"), tensors("intermediates"))

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.meta["config"])

    @property
    def epoch_length(self) -> int:
        return int(self.config["train"]["OFFICIAL_EPOCH_LENGTH"])

    def train_config(self) -> TrainConfig:
        c = self.config
        st, dino, ibot, te = c["student"], c["dino"], c["ibot"], c["teacher"]
        op, cr = c["optim"], c["crops"]
        arch = self.meta["tiny_arch"]
        return apply_overrides(TrainConfig(), {
            "model.arch": {"patch_size": st["patch_size"], "embed_dim": arch["embed_dim"],
                           "depth": arch["depth"],
                           "num_heads": arch["num_heads"], "mlp_ratio": float(arch["mlp_ratio"]),
                           "img_size": cr["global_crops_size"], "layer_scale_init": st["layerscale"],
                           "interpolate_offset": st["interpolate_offset"],
                           "interpolate_antialias": st["interpolate_antialias"]},
            "model.num_register_tokens": st["num_register_tokens"],
            "model.drop_path_rate": st["drop_path_rate"], "model.drop_path_uniform": st["drop_path_uniform"],
            "objective.name": "dinov2",
            "objective.centering": "softmax" if c["train"]["centering"] == "centering" else "sinkhorn_knopp",
            "objective.dino_weight": dino["loss_weight"], "objective.koleo_weight": dino["koleo_loss_weight"],
            "objective.ibot_weight": ibot["loss_weight"],
            "objective.ibot_separate_head": ibot["separate_head"],
            "objective.ibot_out_dim": ibot["head_n_prototypes"],
            "objective.ibot_hidden_dim": ibot["head_hidden_dim"],
            "objective.ibot_bottleneck_dim": ibot["head_bottleneck_dim"],
            "objective.mask_probability": ibot["mask_sample_probability"],
            "objective.mask_ratio": ibot["mask_ratio_min_max"],
            "head.out_dim": dino["head_n_prototypes"], "head.hidden_dim": dino["head_hidden_dim"],
            "head.bottleneck_dim": dino["head_bottleneck_dim"], "head.nlayers": dino["head_nlayers"],
            "head.norm_last_layer": False,
            "loss.warmup_teacher_temp": te["warmup_teacher_temp"], "loss.teacher_temp": te["teacher_temp"],
            "loss.warmup_teacher_temp_epochs": te["warmup_teacher_temp_epochs"],
            "optim.lr": op["base_lr"], "optim.min_lr": op["min_lr"],
            "optim.warmup_epochs": op["warmup_epochs"],
            "optim.weight_decay": op["weight_decay"], "optim.weight_decay_end": op["weight_decay_end"],
            "optim.momentum_teacher": te["momentum_teacher"], "optim.clip_grad": op["clip_grad"],
            "optim.freeze_last_layer": op["freeze_last_layer_epochs"],
            "optim.batch_size_per_gpu": c["train"]["batch_size_per_gpu"],
            "optim.layer_decay": op["layerwise_decay"],
            "optim.patch_embed_lr_mult": op["patch_embed_lr_mult"],
            "crops.global_size": cr["global_crops_size"], "crops.local_size": cr["local_crops_size"],
            "crops.local_crops_number": cr["local_crops_number"],
            "run.epochs": op["epochs"], "run.precision": "fp32",
        })

    def state(self, network: str, final: bool = False) -> dict[str, torch.Tensor]:
        """The official ``student`` / ``teacher`` in :class:`DinoV2Network` keys."""
        source = self.final if final else self.init
        prefix = f"{network}."
        return official_network_keys({k[len(prefix):]: v for k, v in source.items() if k.startswith(prefix)})

    def crops(self, it: int) -> list[torch.Tensor]:
        """The iteration's crop batches in dinofeat's order: global crop 0, global crop 1, local crops."""
        n_local = int(self.config["crops"]["local_crops_number"])
        global_crops = self.inputs[f"it{it}.collated_global_crops"].float()
        local_crops = self.inputs[f"it{it}.collated_local_crops"].float()
        return [*global_crops.chunk(2), *(local_crops.chunk(n_local) if n_local else [])]

    def masks(self, it: int) -> IbotMasks:
        return IbotMasks(self.inputs[f"it{it}.collated_masks"].bool(), int(self.inputs[f"it{it}.upperbound"]))
