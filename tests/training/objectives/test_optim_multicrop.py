"""Parameter groups, per-tensor clipping, last-layer cancelling, LARS, multi-crop grouping, config."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dinofeat.training.config.train_config import TrainConfig, apply_overrides, build_arch, resolve_config
from dinofeat.training.engine.step import build_student_teacher
from dinofeat.training.objectives.multicrop import MultiCropWrapper, resolution_groups
from dinofeat.training.objectives.optim import (
    LARS,
    build_optimizer,
    cancel_last_layer_gradients,
    clip_gradients_per_param,
    param_groups,
)


def _tiny() -> TrainConfig:
    return apply_overrides(TrainConfig(), {
        "model.arch": {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2, "img_size": 32},
        "head.out_dim": 16, "head.hidden_dim": 8, "head.bottleneck_dim": 4})


def test_param_groups_official_rule() -> None:
    for norm_last in (True, False):
        cfg = apply_overrides(_tiny(), {"head.norm_last_layer": norm_last})
        student, _, _ = build_student_teacher(cfg)
        reg, no_reg = param_groups(student)
        assert "backbone.cls_token" in reg["names"] and "backbone.pos_embed" in reg["names"]
        assert all(n.endswith(".bias") or n.endswith("norm1.weight") or "norm" in n for n in no_reg["names"])
        gain = "head.last_layer.parametrizations.weight.original0"
        assert (gain in reg["names"]) is (not norm_last)
        assert no_reg["weight_decay"] == 0.0


def test_per_tensor_clipping() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    model[0].weight.grad = torch.full((3, 3), 10.0)
    model[0].bias.grad = torch.full((3,), 0.1)
    norms = clip_gradients_per_param(model, 3.0)
    assert len(norms) == 2
    assert abs(model[0].weight.grad.norm().item() - 3.0) < 1e-5
    assert torch.equal(model[0].bias.grad, torch.full((3,), 0.1))  # below the limit: untouched bits


def test_cancel_last_layer_and_optimizers() -> None:
    student, _, _ = build_student_teacher(_tiny())
    student(torch.randn(2, 3, 32, 32)).sum().backward()
    cancel_last_layer_gradients(student, epoch=0, freeze_last_layer=1)
    assert all(p.grad is None for n, p in student.named_parameters() if "last_layer" in n)
    for name in ("adamw", "sgd", "lars"):
        opt = build_optimizer(name, param_groups(student))  # type: ignore[arg-type]
        for group in opt.param_groups:
            group["lr"] = 0.1
        opt.step()
    assert isinstance(build_optimizer("lars", param_groups(student)), LARS)
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer("adam", param_groups(student))  # type: ignore[arg-type]


def test_multicrop_groups_and_single_head_call() -> None:
    a, b = torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 4, 4)
    assert resolution_groups([a, a, b, b]) == [(0, 2), (2, 4)]
    calls = []
    backbone = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    backbone.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    head = nn.Linear(3, 5)
    head_calls = []
    head.register_forward_hook(lambda m, i, o: head_calls.append(i[0].shape[0]))
    out = MultiCropWrapper(backbone, head)([a, a, b, b, b])
    assert out.shape == (10, 5) and calls == [4, 6] and head_calls == [10]


def test_config_sources_and_errors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("optim:\n  lr: 0.002\ncrops:\n  local_crops_number: 2\n")
    cfg = resolve_config("resnet50_sgd", yaml_file, ["optim.min_lr=0", "optim.optimizer=lars"])
    assert cfg.optim.lr == 0.002 and cfg.crops.local_crops_number == 2 and cfg.optim.optimizer == "lars"
    assert cfg.crops.global_scale == (0.14, 1.0) and build_arch(cfg.model).embed_dim == 2048
    assert build_arch(resolve_config(overrides=["model.arch=vit_s8"]).model).patch_size == 8  # type: ignore[union-attr]
    for bad in (["nope.x=1"], ["optim.nope=1"], ["model.arch=vit_huge"]):
        with pytest.raises(KeyError):
            build_arch(resolve_config(overrides=bad).model)
    with pytest.raises(KeyError, match="unknown preset"):
        resolve_config("nope")
    for bad, message in ((["optim.lr=abc"], "optim.lr' expects a number, got 'abc'"),
                         (["run.epochs=1.5"], "run.epochs' expects a whole number"),
                         (["run.epochs=true"], "run.epochs' expects a number")):
        with pytest.raises(TypeError, match=message):
            resolve_config(overrides=bad)
    assert resolve_config(overrides=["run.epochs=2.0", "optim.warmup_epochs=0"]).run.epochs == 2
    out_of_range = ["run.epochs=3", "crops.local_crops_number=-1", "crops.global_scale=[0.9,0.1]",
                    "optim.lr=0", "head.out_dim=0", "loss.center_momentum=1.5", "run.precision=fp8"]
    with pytest.raises(ValueError, match="invalid training config") as error:
        resolve_config(overrides=out_of_range)
    for message in ("optim.warmup_epochs (10) must lie in [0, run.epochs = 3]",
                    "crops.local_crops_number must be >= 0, got -1", "crops.global_scale must be (low, high)",
                    "optim.lr must be > 0", "head.out_dim must be >= 1",
                    "loss.center_momentum must lie in [0, 1], got 1.5",
                    "run.precision must be one of auto, fp32, fp16, bf16, got 'fp8'"):
        assert message in str(error.value)
    assert isinstance(resolve_config(overrides=["optim.lr=1"]).optim.lr, float)
    (tmp_path / "bad.yaml").write_text("optim: [1, 2\n")
    with pytest.raises(ValueError, match=r"bad\.yaml is not valid YAML"):
        resolve_config(config_file=tmp_path / "bad.yaml")
    (tmp_path / "bad.json").write_text('{"optim": {"lr": }}')
    with pytest.raises(ValueError, match=r"bad\.json is not valid JSON"):
        resolve_config(config_file=tmp_path / "bad.json")
    assert TrainConfig().optim.lr == 0.0005 and TrainConfig().head.out_dim == 65536
