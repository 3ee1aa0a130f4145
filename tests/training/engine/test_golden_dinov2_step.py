"""Three full DINOv2 iterations against the official training step, for every golden configuration
(``../shared/golden/dinov2_train/*/golden.json``, or the folder in ``DINOFEAT_GOLDEN_DINOV2_TRAIN``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dinofeat.training.engine.dinov2_step import DinoV2Step, build_dinov2_networks, dinov2_schedules
from tests.training.dinov2_golden import Golden, golden_configs

LOSS_TOL, TEACHER_TOL, CENTER_TOL = 1e-5, 1e-6, 1e-6
# Student weights: the README suggests 1e-5 (its 1-vs-2-thread noise is 5e-7). sk_separate stays within 6e-7;
# center_shared has lr > 0 in its first AdamW step, whose update lr * g / (|g| + eps) is lr * sign(g) for any
# element, so an element whose gradient nearly cancels turns float32 rounding into up to ~1e-2 lr: one
# element of dino_head.mlp.0.weight (of 3072) ends 1.5e-5 away, every other within 1e-5.
STUDENT_TOL, STUDENT_ELEMENTS_TOL, OUTLIERS = 1e-5, 2e-5, 4
KEY_BIAS_TOL = 1e-4  # the key bias has a zero gradient: AdamW moves it on rounding noise (golden README)


def _differences(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], dim: int,
                 ) -> tuple[torch.Tensor, float]:
    """(every element's difference outside the key-bias slices, the largest inside them)."""
    assert set(got) == set(expected), set(got) ^ set(expected)
    rest, key_bias = [], 0.0
    for name, value in expected.items():
        diff = (got[name] - value).abs().flatten()
        if name.endswith("attn.qkv.bias"):
            key_bias = max(key_bias, diff[dim:2 * dim].max().item())
            diff = torch.cat([diff[:dim], diff[2 * dim:]])
        rest.append(diff)
    return torch.cat(rest), key_bias


@pytest.mark.parametrize("folder", golden_configs())
def test_three_iterations_match_official(folder: Path) -> None:
    golden = Golden.load(folder)
    cfg = golden.train_config()
    student, teacher, arch = build_dinov2_networks(cfg)
    student.load_state_dict(golden.state("student"), strict=True)
    teacher.load_state_dict(golden.state("teacher"), strict=True)
    schedules = dinov2_schedules(cfg, golden.epoch_length, world_size=1)
    step = DinoV2Step(cfg, student, teacher, schedules, torch.device("cpu"))
    for record in golden.meta["iterations"]:
        it = int(record["iteration"])
        metrics = step(golden.crops(it), it, int(record["epoch"]), masks=golden.masks(it))
        for name in ("lr", "wd", "momentum", "teacher_temp", "last_layer_lr"):
            assert metrics[name] == record[name], (it, name, metrics[name], record[name])
        for name, value in record["losses"].items():
            assert abs(metrics[name] - value) < LOSS_TOL, (it, name, metrics[name], value)
        assert abs(metrics["loss"] - record["total_loss_backprop"]) < LOSS_TOL, (it, metrics["loss"])
        assert metrics["n_masked"] == record["n_masked_patches"]
        if step.loss_fn.centering == "softmax":
            next_dino = golden.intermediates[f"it{it}.dino_center_next"]
            next_ibot = golden.intermediates[f"it{it}.ibot_center_next"]
            torch.testing.assert_close(step.loss_fn.dino_center, next_dino, atol=CENTER_TOL, rtol=0)
            torch.testing.assert_close(step.loss_fn.ibot_center, next_ibot, atol=CENTER_TOL, rtol=0)
    dim = arch.embed_dim
    rest, key_bias = _differences(teacher.state_dict(), golden.state("teacher", final=True), dim)
    assert rest.max() < TEACHER_TOL and key_bias < KEY_BIAS_TOL, (rest.max(), key_bias)
    rest, key_bias = _differences(student.state_dict(), golden.state("student", final=True), dim)
    assert rest.max() < STUDENT_ELEMENTS_TOL and key_bias < KEY_BIAS_TOL, (rest.max(), key_bias)
    assert int((rest >= STUDENT_TOL).sum()) <= OUTLIERS, sorted(rest.tolist())[-OUTLIERS - 1:]


@pytest.mark.parametrize("folder", golden_configs())
def test_schedules_match_official(folder: Path) -> None:
    golden = Golden.load(folder)
    cfg = golden.train_config()
    schedules = dinov2_schedules(cfg, golden.epoch_length, world_size=1)
    for name, values in golden.meta["schedules_first_iters"].items():
        schedule = getattr(schedules, name)
        assert [schedule[i] for i in range(len(values))] == values, name
