"""The "v2" schedules and the sqrt lr rule against the official build_schedulers output of the four official
configs (golden.json["schedules"]); "v1" (vitl_im1k_lin834) through the shared DINO cosine schedule."""

from __future__ import annotations

import numpy as np
import pytest

from dinofeat.training.objectives.dinov3.schedules import (
    WarmupCosine,
    build_v2_schedules,
    sqrt_lr_scale,
    warmup_cosine_constant,
)
from dinofeat.training.objectives.schedules import cosine_schedule
from tests.helpers.dinov3_train import OFFICIAL_V1_VITL, golden_json, official_v2_stages

NAMES = {"lr": "lr", "wd": "weight_decay", "momentum": "momentum", "teacher_temp": "teacher_temp",
         "last_layer_lr": "last_layer_lr"}


def _check_points(arrays: dict[str, np.ndarray], points: dict[str, dict[str, float]], past_end: dict | None,
                  config: str) -> None:
    for it_text, values in points.items():
        it = int(it_text)
        for key, expected in values.items():
            array = arrays[NAMES[key]]
            if it >= len(array):
                if past_end is None:  # v2: the official arrays end there (NaN in the golden)
                    assert np.isnan(expected), (config, key, it)
                else:
                    assert past_end[key] == expected, (config, key, it)
                continue
            np.testing.assert_allclose(array[it], expected, rtol=1e-12, atol=0,
                                       err_msg=f"{config} {key} {it}")


def test_v2_stages_match_the_official_schedules():
    golden, stages = golden_json()["schedules"], official_v2_stages()
    v2 = {name: spec for name, spec in golden.items() if spec["v2"]}
    assert sorted(v2) == sorted(stages)
    for name, spec in v2.items():
        stage = stages[name]
        schedules = build_v2_schedules(
            lr=stage["lr"], weight_decay=stage["weight_decay"], momentum=stage["momentum"],
            teacher_temp=stage["teacher_temp"], freeze_last_layer_epochs=stage["freeze_last_layer_epochs"],
            epoch_length=stage["epoch_length"], epochs=stage["epochs"],
            batch_size_per_gpu=spec["batch_size_per_gpu"], world_size=spec["gpus_assumed"])
        assert len(schedules.lr) == spec["total_iterations"]
        _check_points(vars(schedules), spec["points"], None, name)


def test_v1_config_matches_the_shared_cosine_schedules():
    golden = {name: spec for name, spec in golden_json()["schedules"].items() if not spec["v2"]}
    assert golden
    for name, spec in golden.items():
        c = OFFICIAL_V1_VITL
        epochs, length = c["epochs"], c["epoch_length"]
        lr = cosine_schedule(c["lr"] * sqrt_lr_scale(spec["batch_size_per_gpu"], spec["gpus_assumed"]),
                             c["min_lr"], epochs, length, warmup_epochs=c["warmup_epochs"])
        last_layer = lr.copy()
        last_layer[: c["freeze_last_layer_epochs"] * length] = 0
        start, end, temp_epochs = c["teacher_temp"]
        arrays = {"lr": lr, "last_layer_lr": last_layer,
                  "weight_decay": cosine_schedule(*c["weight_decay"], epochs, length),
                  "momentum": cosine_schedule(*c["momentum"], epochs, length),
                  "teacher_temp": cosine_schedule(end, end, temp_epochs, length, warmup_epochs=temp_epochs,
                                                  start_warmup_value=start)}
        # v1 schedules return their final value past their end (DINOv2's CosineScheduler).
        final = {"lr": c["min_lr"], "last_layer_lr": c["min_lr"], "wd": c["weight_decay"][1],
                 "momentum": c["momentum"][1], "teacher_temp": end}
        assert epochs * length == spec["total_iterations"]
        _check_points(arrays, spec["points"], final, name)


def test_shapes_of_the_v2_schedule():
    warm = warmup_cosine_constant(0.0, 1.0, 1.0, 4, 10)
    np.testing.assert_array_equal(warm, [0, 0.25, 0.5, 0.75, 1, 1, 1, 1, 1, 1])  # warm-up then constant
    cosine = warmup_cosine_constant(0.0, 0.0, 2.0, 0, 8, 5)
    assert cosine[0] == 0.0 and cosine[4] == 2.0 and list(cosine[5:]) == [2.0] * 3
    assert list(WarmupCosine(1.5, 1.5, 1.5, 0, 0).build(10, 2)) == [1.5] * 20  # a constant weight
    assert sqrt_lr_scale(8, 256) == pytest.approx(4 * 2**0.5)
    with pytest.raises(ValueError, match="fit in the 5 iterations"):
        warmup_cosine_constant(0, 1, 1, 3, 5, 3)
    with pytest.raises(ValueError, match="must be positive"):
        sqrt_lr_scale(0, 8)
