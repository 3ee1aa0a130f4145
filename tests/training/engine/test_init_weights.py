"""Continued pretraining: model.init from a zoo name, an exported folder and an official full
checkpoint (with its heads); the patch-embedding adaptation; layer-wise lr decay."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import dinofeat
from dinofeat.hub.format import HubConfig, save_pretrained
from dinofeat.models import build_backbone, family_of
from dinofeat.models.vit.config import ViTConfig
from dinofeat.training.config.train_config import resolve_config
from dinofeat.training.engine.init_weights import adapt_patch_embed, layer_decay_param_groups
from dinofeat.training.engine.trainer import Trainer
from tests.helpers.dinov3 import TINY_V3
from tests.helpers.training import TINY_TRAIN_OVERRIDES, make_image_folder

ARCH = ViTConfig(patch_size=8, embed_dim=32, depth=2, num_heads=2, img_size=32)
NO_ARCH = [o for o in TINY_TRAIN_OVERRIDES if not o.startswith("model.arch")]


def test_rgb_filters_repeated_over_bands_give_the_same_features() -> None:
    torch.manual_seed(0)
    rgb = build_backbone(ARCH).eval()
    images = torch.randn(2, 3, 32, 32)
    for channels, inputs in ((3, images), (6, images.repeat(1, 2, 1, 1))):  # 6 bands: R G B R G B
        bands = build_backbone(ViTConfig(**{**ARCH.to_dict(), "in_chans": channels})).eval()
        state = rgb.state_dict()
        key = "patch_embed.proj.weight"
        state[key] = adapt_patch_embed(state[key], channels, "repeat")
        bands.load_state_dict(state)
        with torch.no_grad():
            torch.testing.assert_close(bands(inputs), rgb(images), atol=1e-5, rtol=0)
    weight = torch.randn(4, 3, 2, 2)
    averaged = adapt_patch_embed(weight, 5, "average")
    flat = torch.ones(1, 5, 2, 2)
    # A flat image has the response of the flat RGB image under both rules.
    rgb_response = (weight * torch.ones(1, 3, 2, 2)).sum(dim=(1, 2, 3))
    torch.testing.assert_close((averaged * flat).sum(dim=(1, 2, 3)), rgb_response)
    with pytest.raises(ValueError, match="must be 'repeat' or 'average'"):
        adapt_patch_embed(weight, 5, "mean")


def test_init_from_zoo_sets_the_architecture_and_loads_both_backbones(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "images")
    cfg = resolve_config(overrides=[*NO_ARCH, f"data.path={data}", f"run.output_dir={tmp_path / 'run'}",
                                    "model.init=vit_t16_d4_imagenette", "data.channels=null"])
    trainer = Trainer(cfg)
    reference = dinofeat.load("vit_t16_d4_imagenette", device="cpu").backbone.state_dict()
    for wrapper in (trainer.student_module, trainer.teacher):
        got = wrapper.backbone.state_dict()
        assert all(torch.equal(reference[k], got[k]) for k in reference)
    assert isinstance(cfg.model.arch, dict) and cfg.model.arch["depth"] == 4  # recorded for export


def test_init_from_a_dinov3_folder_trains_a_dinov3_student_and_exports_it(tmp_path: Path) -> None:
    from dinofeat.models import DinoV3VisionTransformer, arch_from_dict
    from dinofeat.training.cli import main

    arch = arch_from_dict({**TINY_V3, "patch_size": 8})
    folder = save_pretrained(build_backbone(arch).eval(), tmp_path / "v3", HubConfig(arch=arch, name="v3"))
    data = make_image_folder(tmp_path / "images")
    run = tmp_path / "run"
    cfg = resolve_config(overrides=[*NO_ARCH, f"data.path={data}", f"run.output_dir={run}",
                                    f"model.init={folder}", "run.epochs=1", "optim.warmup_epochs=0"])
    trainer = Trainer(cfg)
    assert isinstance(trainer.student_module.backbone, DinoV3VisionTransformer)
    assert cfg.model.arch["family"] == "dinov3"  # type: ignore[index]
    trainer.fit()
    assert main(["export", str(run / "checkpoint.pth"), str(tmp_path / "export")]) == 0
    exported = dinofeat.load(tmp_path / "export", device="cpu")
    teacher = trainer.teacher.backbone.eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(exported.embed(images), teacher(images), atol=1e-6, rtol=0)


def test_init_from_an_rgb_folder_adapts_the_patch_embedding_for_bands(tmp_path: Path) -> None:
    from tests.helpers.training import BAND_OVERRIDES, make_band_folder

    torch.manual_seed(0)
    folder = save_pretrained(build_backbone(ARCH), tmp_path / "rgb", HubConfig(arch=ARCH))
    data = make_band_folder(tmp_path / "bands")
    cfg = resolve_config(overrides=[*NO_ARCH, f"data.path={data}", f"run.output_dir={tmp_path / 'run'}",
                                    *BAND_OVERRIDES, f"model.init={folder}",
                                    "model.patch_embed_adapt=average"])
    trainer = Trainer(cfg)
    assert trainer.init_info["patch_embed_adapted"] == "average: 3 -> 5 channels"
    weight = trainer.teacher.backbone.patch_embed.proj.weight
    rgb = dinofeat.load(folder, device="cpu").backbone.patch_embed.proj.weight
    torch.testing.assert_close(weight, adapt_patch_embed(rgb, 5, "average"))


def test_init_from_official_full_checkpoint_brings_its_heads(golden: Path, tmp_path: Path) -> None:
    from dinofeat.training.engine.checkpoint import load_checkpoint

    path = golden / "dino_full_checkpoint_p16.pth"
    data = make_image_folder(tmp_path / "images")
    cfg = resolve_config(overrides=[
        *NO_ARCH, f"data.path={data}", f"run.output_dir={tmp_path / 'run'}",
        'model.arch={"patch_size": 16, "embed_dim": 192, "depth": 4, "num_heads": 3}', "head.out_dim=256",
        "head.hidden_dim=128", "head.bottleneck_dim=64", f"model.init={path}", "crops.global_size=32"])
    trainer = Trainer(cfg)
    ckpt = load_checkpoint(path)
    assert trainer.init_info["heads_loaded"] and trainer.start_epoch == 0
    assert torch.equal(trainer.teacher.backbone.pos_embed, ckpt["teacher"]["backbone.pos_embed"])
    assert torch.equal(trainer.student_module.head.mlp[0].weight, ckpt["student"]["module.head.mlp.0.weight"])
    assert torch.equal(trainer.teacher.head.mlp[0].weight, ckpt["teacher"]["head.mlp.0.weight"])


def test_layer_decay_groups_and_their_learning_rates(tmp_path: Path) -> None:
    from torch import nn

    from dinofeat.training.objectives.multicrop import MultiCropWrapper

    model = MultiCropWrapper(build_backbone(ARCH), nn.Linear(32, 4))
    groups = layer_decay_param_groups(model, depth=2, layer_decay=0.5, patch_embed_lr_mult=0.2,
                                      layer_of=family_of(ARCH).layer_of_parameter)
    mult = {name: g["lr_mult"] for g in groups for name in g["names"]}
    assert mult["head.weight"] == 1.0 and mult["backbone.norm.weight"] == 1.0
    assert mult["backbone.blocks.1.attn.qkv.weight"] == 0.5
    assert mult["backbone.blocks.0.mlp.fc1.weight"] == 0.25
    assert mult["backbone.cls_token"] == 0.125
    assert mult["backbone.patch_embed.proj.weight"] == pytest.approx(0.125 * 0.2)
    assert all(g["weight_decay"] == 0.0 for g in groups if not g["apply_wd"])
    assert {n for g in groups if not g["apply_wd"] for n in g["names"]} >= {"head.bias", "backbone.norm.bias"}
    data = make_image_folder(tmp_path / "images")
    cfg = resolve_config(overrides=[*TINY_TRAIN_OVERRIDES, f"data.path={data}", f"run.output_dir={tmp_path}",
                                    "optim.layer_decay=0.5", "optim.patch_embed_lr_mult=0.2", "run.epochs=1",
                                    "optim.warmup_epochs=0"])
    trainer = Trainer(cfg)
    trainer.train_one_epoch(0)
    lrs = {g["lr_mult"]: g["lr"] for g in trainer.step.optimizer.param_groups}
    top = lrs[1.0]
    assert top > 0 and all(lr == pytest.approx(top * m) for m, lr in lrs.items())
