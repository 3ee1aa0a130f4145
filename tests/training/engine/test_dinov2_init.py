"""Continued pretraining with the DINOv2 objective: from a model folder (heads fresh, backbone frozen for
objective.freeze_backbone_epochs), from an official DINOv2 .pth (its trained mask token kept), and the error
for registers the initial weights do not have."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dinofeat.hub.format import HubConfig, save_pretrained
from dinofeat.models.vit.config import ViTConfig
from dinofeat.models.vit.model import DinoVisionTransformer
from dinofeat.training.config.train_config import resolve_config
from dinofeat.training.engine.trainer import Trainer
from tests.helpers.training import TINY_TRAIN_OVERRIDES, make_image_folder

NO_ARCH = [o for o in TINY_TRAIN_OVERRIDES if not o.startswith("model.arch")]
ARCH = ViTConfig(patch_size=8, embed_dim=32, depth=2, num_heads=2, img_size=32, layer_scale_init=1e-5)


def _config(data: Path, out: Path, *extra: str):  # type: ignore[no-untyped-def]
    return resolve_config(overrides=[*NO_ARCH, f"data.path={data}", f"run.output_dir={out}",
                                     "objective.name=dinov2", "head.norm_last_layer=false", *extra])


def test_heads_learn_while_the_backbone_stays_frozen(tmp_path: Path) -> None:
    torch.manual_seed(0)
    folder = save_pretrained(DinoVisionTransformer(ARCH).eval(), tmp_path / "model",
                             HubConfig(arch=ARCH, name="tiny"))
    data = make_image_folder(tmp_path / "images")
    trainer = Trainer(_config(data, tmp_path / "run", f"model.init={folder}",
                              "objective.freeze_backbone_epochs=1", "optim.warmup_epochs=0",
                              "optim.freeze_last_layer=0"))
    start = {k: v.clone() for k, v in trainer.student_module.state_dict().items()}
    trainer.train_one_epoch(0)  # 2 iterations, backbone lr 0
    after = trainer.student_module.state_dict()
    assert all(torch.equal(start[k], after[k]) for k in start if k.startswith("backbone."))
    assert not torch.equal(start["dino_head.mlp.0.weight"], after["dino_head.mlp.0.weight"])
    trainer.train_one_epoch(1)
    moved = trainer.student_module.state_dict()
    name = "backbone.blocks.0.attn.qkv.weight"
    assert not torch.equal(start[name], moved[name])


def test_official_pth_keeps_its_mask_token_and_registers(tmp_path: Path) -> None:
    torch.manual_seed(0)
    arch = ViTConfig(**{**ARCH.to_dict(), "num_register_tokens": 2})
    state = DinoVisionTransformer(arch).state_dict()
    state["register_tokens"] = state.pop("reg_token")
    state["mask_token"] = torch.randn(1, 32)
    torch.save(state, tmp_path / "dinov2.pth")
    data = make_image_folder(tmp_path / "images")
    trainer = Trainer(_config(data, tmp_path / "run", f"model.init={tmp_path / 'dinov2.pth'}",
                              f"model.arch={json.dumps(arch.to_dict())}"))
    backbone = trainer.student_module.backbone
    assert torch.equal(backbone.mask_token, state["mask_token"])
    assert torch.equal(backbone.reg_token, state["register_tokens"])


def test_registers_the_initial_weights_lack_are_refused(tmp_path: Path) -> None:
    folder = save_pretrained(DinoVisionTransformer(ARCH).eval(), tmp_path / "model",
                             HubConfig(arch=ARCH, name="tiny"))
    data = make_image_folder(tmp_path / "images")
    with pytest.raises(ValueError, match=r"model.num_register_tokens=4, but model.init .* has no register"):
        Trainer(_config(data, tmp_path / "run", f"model.init={folder}", "model.num_register_tokens=4"))
