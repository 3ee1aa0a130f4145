"""The DINOv3 training goldens: where they are, their tensors and scalars, and the tolerance.

The folder is ``$DINOFEAT_GOLDEN_DINOV3_TRAIN`` when set (another seed made by the same script, with
other shapes), else ``../shared/golden/dinov3_train``; tests derive every shape from the files.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers.common import shared_path

GOLDEN_ENV = "DINOFEAT_GOLDEN_DINOV3_TRAIN"
#: The README's tolerance: relative 1e-5.
RTOL = 1e-5


def golden_dir() -> Path:
    """The golden folder; a folder named by the variable that does not exist is an error, not a skip."""
    named = os.environ.get(GOLDEN_ENV)
    if named:
        path = Path(named)
        if not (path / "golden.json").is_file():
            pytest.fail(f"{GOLDEN_ENV}={named} holds no golden.json")
        return path
    return shared_path("golden", "dinov3_train")


@functools.cache
def _json(folder: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((Path(folder) / "golden.json").read_text())
    return data


@functools.cache
def _tensors(folder: str, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(Path(folder) / f"{name}.safetensors"))


def golden_json() -> dict[str, Any]:
    return _json(str(golden_dir()))


def golden_tensors(name: str) -> dict[str, torch.Tensor]:
    """The tensors of ``<name>.safetensors`` (shared between tests: do not modify them in place)."""
    return _tensors(str(golden_dir()), name)


def assert_rel_close(actual: torch.Tensor | float, expected: torch.Tensor | float, what: str,
                     rtol: float = RTOL) -> None:
    """``max |actual - expected| <= rtol * max |expected|``: relative to the scale of the whole tensor (a
    gradient's near-zero entries are judged against its largest one), exact shape required."""
    actual_t, expected_t = torch.as_tensor(actual).double(), torch.as_tensor(expected).double()
    assert actual_t.shape == expected_t.shape, (
        f"{what}: shape {tuple(actual_t.shape)} != {tuple(expected_t.shape)}")
    scale = expected_t.abs().max().item() if expected_t.numel() else 0.0
    diff = (actual_t - expected_t).abs().max().item() if expected_t.numel() else 0.0
    assert diff <= rtol * max(scale, 1e-30), f"{what}: max abs diff {diff:.3g} > {rtol} x {scale:.3g}"


def official_v2_stages() -> dict[str, dict[str, Any]]:
    """The schedule settings of the three official ViT-7B stage configs (``schedules`` sections, epochs,
    ``OFFICIAL_EPOCH_LENGTH``), as the reference facts give them; batch and GPU counts come from the
    golden."""
    from dinofeat.training.objectives.dinov3.schedules import WarmupCosine

    def constant(value: float) -> WarmupCosine:
        return WarmupCosine(value, value, value)

    def stage(epochs: int, lr: WarmupCosine, freeze: int, temp: WarmupCosine, momentum: float
              ) -> dict[str, Any]:
        return {"epochs": epochs, "epoch_length": 1000, "lr": lr, "freeze_last_layer_epochs": freeze,
                "teacher_temp": temp, "momentum": constant(momentum), "weight_decay": constant(0.04)}

    warm_temp = WarmupCosine(0.04, 0.07, 0.07, warmup_epochs=100)
    return {
        "dinov3_vit7b16_pretrain.yaml": stage(1000, WarmupCosine(0, 5e-5, 5e-5, 100), 5, warm_temp, 0.994),
        "dinov3_vit7b16_gram_anchor.yaml": stage(1200, WarmupCosine(0, 3e-5, 3e-5, 100), 5, warm_temp, 0.999),
        "dinov3_vit7b16_high_res_adapt.yaml": stage(30, WarmupCosine(0, 0, 1.25e-5, 0, cosine_epochs=10), 0,
                                                    constant(0.07), 0.999),
    }


#: ``vitl_im1k_lin834.yaml``'s "v1" settings (DINOv2's cosine schedules): lr 1e-3 (scaled by the sqrt rule),
#: min lr 1e-6, 10 warm-up epochs; weight decay 0.04 -> 0.4; momentum 0.992 -> 1; teacher temperature
#: 0.04 -> 0.07 over 30 epochs; last layer frozen for 1 epoch; 100 epochs of 1250 iterations.
OFFICIAL_V1_VITL = {"epochs": 100, "epoch_length": 1250, "lr": 1e-3, "min_lr": 1e-6, "warmup_epochs": 10,
                    "weight_decay": (0.04, 0.4), "momentum": (0.992, 1.0), "teacher_temp": (0.04, 0.07, 30),
                    "freeze_last_layer_epochs": 1}


def gram_options(section: dict[str, Any]) -> Any:
    """The GramOptions of an official ``gram`` config section."""
    from dinofeat.training.objectives.dinov3.gram import GramOptions

    names = ("normalized", "img_level", "remove_neg", "remove_only_teacher_neg", "tokens_used")
    return GramOptions(**{name: section[name] for name in names})


def scheduled(spec: dict[str, Any] | None, epoch_length: int, epochs: int, iteration: int) -> float | None:
    """The value at ``iteration`` of an official v2 schedule section (``start``, ``peak``, ``end``,
    ``warmup_epochs``, ``cosine_epochs``); None for a missing schedule."""
    from dinofeat.training.objectives.dinov3.schedules import WarmupCosine

    if spec is None:
        return None
    schedule = WarmupCosine(spec["start"], spec["peak"], spec["end"], spec.get("warmup_epochs", 0),
                            spec.get("cosine_epochs"))
    return float(schedule.build(epoch_length, epochs)[iteration])


#: Official training computes RoPE in bfloat16: a last-bit difference in q or k (another CPU's kernels,
#: another summation order) can round to the neighbouring bfloat16 and move an image's outputs far more than
#: float32 noise. Measured on the one-step golden: perturbing its input crops by 1e-7 (relative) moves the
#: student's patch tokens and the Gram teacher's by up to 6.7e-5 of the tensor's scale; the same step with
#: float32 RoPE is 1.5e-3 (Gram teacher) to 2e-2 (CLS) away. Tensors downstream of bf16 RoPE are compared at
#: this bound, and their median deviation at the README's 1e-5.
BF16_ROPE_RTOL = 2e-4


def assert_bf16_rope_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """:func:`assert_rel_close` at :data:`BF16_ROPE_RTOL` for the largest deviation and :data:`RTOL` for the
    median one (the bulk of the values must match as float32 computations do)."""
    assert_rel_close(actual, expected, what, rtol=BF16_ROPE_RTOL)
    scale = expected.abs().max().item()
    median = (actual.double() - expected.double()).abs().median().item()
    assert median <= RTOL * scale, f"{what}: median abs diff {median:.3g} > {RTOL} x {scale:.3g}"
