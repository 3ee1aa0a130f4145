"""Four full DINO iterations against the official training step (golden section 10)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from dinofeat.training.config.train_config import TrainConfig, apply_overrides
from dinofeat.training.engine.step import DinoStep, Schedules, build_student_teacher
from dinofeat.training.objectives.dino.head import official_head_keys_to_parametrized

GOLDEN_CONFIG = {
    "model.arch": {"patch_size": 8, "embed_dim": 96, "depth": 2, "num_heads": 3, "img_size": 224},
    "model.drop_path_rate": 0.0,
    "head.out_dim": 128, "head.hidden_dim": 64, "head.bottleneck_dim": 32, "head.norm_last_layer": True,
    "loss.warmup_teacher_temp": 0.04, "loss.teacher_temp": 0.07, "loss.warmup_teacher_temp_epochs": 1,
    "optim.lr": 0.0005, "optim.min_lr": 1e-6, "optim.warmup_epochs": 1, "optim.weight_decay": 0.04,
    "optim.weight_decay_end": 0.4, "optim.momentum_teacher": 0.996, "optim.clip_grad": 3.0,
    "optim.freeze_last_layer": 1, "optim.batch_size_per_gpu": 4,
    "crops.local_crops_number": 4, "run.epochs": 2, "run.precision": "fp32",
}


def _prefixed(ref: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    state = {k[len(prefix):]: v for k, v in ref.items() if k.startswith(prefix)}
    return official_head_keys_to_parametrized(state)


def test_four_iterations_match_official(golden: Path) -> None:
    ref = load_file(str(golden / "train_step.safetensors"))
    cfg = apply_overrides(TrainConfig(), GOLDEN_CONFIG)
    student, teacher, _ = build_student_teacher(cfg)
    student.load_state_dict(_prefixed(ref, "student_init."), strict=True)
    teacher.load_state_dict(_prefixed(ref, "student_init."), strict=True)
    schedules = Schedules.from_config(cfg, niter_per_ep=2, world_size=1)
    assert torch.equal(torch.from_numpy(schedules.lr), ref["lr_schedule"])
    assert torch.equal(torch.from_numpy(schedules.wd), ref["wd_schedule"])
    assert torch.equal(torch.from_numpy(schedules.momentum), ref["momentum_schedule"])
    step = DinoStep(cfg, student, teacher, schedules, torch.device("cpu"))
    for it in range(4):
        crops = [*ref["global_crops"][it].unbind(0), *ref["local_crops"][it].unbind(0)]
        metrics = step(crops, it, epoch=it // 2)
        assert abs(metrics["loss"] - float(ref["loss"][it])) < 1e-5, (it, metrics["loss"], ref["loss"][it])
        for name in ("lr", "wd", "momentum", "teacher_temp"):
            assert metrics[name] == float(ref[name][it]), (it, name)
        torch.testing.assert_close(step.loss_fn.center, ref["center_after"][it : it + 1], atol=1e-5, rtol=0)
    for prefix, model in (("student_final.", student), ("teacher_final.", teacher)):
        expected = _prefixed(ref, prefix)
        got = model.state_dict()
        assert set(got) == set(expected)
        worst = max((got[k] - expected[k]).abs().max().item() for k in expected)
        assert worst < 1e-5, (prefix, worst)
