"""End-to-end DINOv2 runs: dinofeat-train on a generated folder with objective.name=dinov2 (registers,
SwiGLU, layer scale), export, dinofeat.load equal to the trained teacher backbone; the CPU preset."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import dinofeat
from dinofeat.models import build_backbone
from dinofeat.training.cli import main
from dinofeat.training.config.train_config import config_from_dict, training_arch
from dinofeat.training.engine.checkpoint import load_checkpoint
from tests.helpers.training import BAND_OVERRIDES, make_band_folder, make_image_folder, train_args

DINOV2 = ["objective.name=dinov2", "model.drop_path_uniform=true", "model.drop_path_rate=0.1",
          "head.norm_last_layer=false", "optim.layer_decay=0.9", "optim.patch_embed_lr_mult=0.2",
          "optim.freeze_last_layer=1", "optim.lr=0.05"]
REG_SWIGLU = ['model.arch={"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 32, '
              '"layer_scale_init": 1e-5, "mlp": "swiglu", "mlp_ratio": 2.0}', "model.num_register_tokens=2",
              "objective.centering=sinkhorn_knopp", "objective.ibot_separate_head=true",
              "objective.ibot_out_dim=48"]


BANDS = [*BAND_OVERRIDES, "model.num_register_tokens=1"]


@pytest.mark.parametrize("variant", [[], REG_SWIGLU], ids=["vit", "reg_swiglu_sk"])
def test_train_export_load_dinov2(tmp_path: Path, variant: list[str]) -> None:
    data = make_image_folder(tmp_path / "images")
    out = tmp_path / "run"
    assert main(train_args(data, out, *DINOV2, *variant)) == 0
    iters = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "iteration" in r]
    assert len(iters) == 4
    for key in ("loss", "dino_local_crops_loss", "dino_global_crops_loss", "koleo_loss", "ibot_loss",
                "last_layer_lr", "n_masked", "teacher_entropy"):
        assert all(key in r for r in iters), key
    assert all(r["last_layer_lr"] == 0 for r in iters[:2]) and iters[2]["last_layer_lr"] > 0
    export_dir = tmp_path / "exported"
    assert main(["export", str(out / "checkpoint.pth"), str(export_dir)]) == 0
    ckpt = load_checkpoint(out / "checkpoint.pth")
    backbone = build_backbone(training_arch(config_from_dict(json.loads(ckpt["config"]))))
    teacher = {k.removeprefix("backbone."): v for k, v in ckpt["teacher"].items()
               if k.startswith("backbone.") and k != "backbone.mask_token"}
    backbone.load_state_dict(teacher, strict=True)
    backbone.eval()
    model = dinofeat.load(export_dir, device="cpu")
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = backbone.forward_tokens(images, cls_attention=True)
    assert torch.equal(model.embed(images), expected.cls)
    assert torch.equal(model.cls_attention(images).flatten(2), expected.cls_attention[:, :, -16:])


@pytest.mark.parametrize("variant", [["run.precision=bf16"], ["data.augmentation=device"], BANDS],
                         ids=["bf16", "device_augmentation", "bands"])
def test_dinov2_runs_on_every_data_path(tmp_path: Path, variant: list[str]) -> None:
    data = (make_band_folder if variant is BANDS else make_image_folder)(tmp_path / "data")
    out = tmp_path / "run"
    assert main(train_args(data, out, *DINOV2, "run.epochs=1", *variant)) == 0
    iters = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "iteration" in r]
    assert iters and all(math.isfinite(r["loss"]) and r["ibot_loss"] > 0 for r in iters)


def test_cpu_preset_runs(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "images", n=8, size=(96, 96))
    out = tmp_path / "run"
    args = ["train", "--preset", "dinov2_imagenette_tiny", "--data", str(data), "--output-dir", str(out)]
    for item in ("optim.batch_size_per_gpu=4", "run.epochs=1", "optim.warmup_epochs=0", "data.num_workers=0",
                 "run.max_iters_per_epoch=1", "run.device=cpu"):
        args += ["--set", item]
    assert main(args) == 0
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("ibot_loss" in r for r in records)


@pytest.mark.parametrize(("overrides", "named"), [
    (["objective.mask_ratio=[0.1, 1.2]"], "objective.mask_ratio"),
    (["objective.mask_probability=-0.5"], "objective.mask_probability"),
    (["objective.ibot_out_dim=32"], "objective.ibot_out_dim"),
    (["objective.centering=sinkhorn_knopp", "optim.batch_size_per_gpu=1"], "objective.centering"),
])
def test_bad_dinov2_settings_are_named(tmp_path: Path, overrides: list[str], named: str, capsys) -> None:  # type: ignore[no-untyped-def]
    args = ["train", "--data", str(tmp_path), "--set", "objective.name=dinov2"]
    for item in overrides:
        args += ["--set", item]
    assert main(args) == 2
    assert named in capsys.readouterr().err


def test_resume_with_another_objective_network_is_refused(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    data = make_image_folder(tmp_path / "images")
    out = tmp_path / "run"
    assert main(train_args(data, out, *DINOV2, "run.epochs=1")) == 0
    capsys.readouterr()
    assert main(train_args(data, out, *DINOV2, "run.epochs=2", "objective.ibot_separate_head=true")) == 2
    assert "objective.ibot_separate_head: False there, True now" in capsys.readouterr().err
    assert main(train_args(data, out, "run.epochs=2")) == 2  # the DINO objective
    assert "objective.name: 'dinov2' there, 'dino' now" in capsys.readouterr().err
