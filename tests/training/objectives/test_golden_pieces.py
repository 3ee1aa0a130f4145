"""Parity of the pure pieces with the official DINO outputs in ../shared/golden."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from dinofeat.training.objectives.dino.head import DINOHead, official_head_keys_to_parametrized
from dinofeat.training.objectives.dino.loss import DINOLoss, dino_loss, update_center
from dinofeat.training.objectives.ema import ema_update
from dinofeat.training.objectives.schedules import cosine_schedule, teacher_temp_schedule


def test_schedules_bit_identical(golden: Path) -> None:
    ref = load_file(str(golden / "schedules.safetensors"))
    args = json.loads((golden / "schedules.json").read_text())["config"]
    for name in ("lr", "wd", "momentum"):
        ours = cosine_schedule(**args["cosine"][name])
        assert ours.dtype == np.float64
        np.testing.assert_array_equal(ours, ref[name].numpy())
    for name, kwargs in args["teacher_temp"].items():
        np.testing.assert_array_equal(teacher_temp_schedule(**kwargs), ref[name].numpy())


def test_cosine_schedule_quirks_and_errors() -> None:
    s = cosine_schedule(1.0, 0.0, epochs=3, niter_per_ep=2, warmup_epochs=1)
    assert s[1] == s[2] == 1.0 and s[-1] > 0.0
    for bad in ({"epochs": 0}, {"warmup_epochs": 5}):
        kwargs = {"epochs": 3, "niter_per_ep": 2, **bad}
        try:
            cosine_schedule(1.0, 0.0, **kwargs)
        except ValueError:
            continue
        raise AssertionError(f"no error for {bad}")


def test_dino_loss_and_centre_sequence(golden: Path) -> None:
    ref = load_file(str(golden / "dino_loss.safetensors"))
    cfg = json.loads((golden / "dino_loss.json").read_text())["config"]
    temps = ref["teacher_temp_schedule"].numpy()
    np.testing.assert_array_equal(teacher_temp_schedule(0.04, 0.07, 3, 10), temps)
    module = DINOLoss(cfg["out_dim"], cfg["ncrops"], cfg["student_temp"], cfg["center_momentum"])
    center = ref["center_init"].clone()
    for call in range(4):
        s, t = ref[f"call{call}_student_output"], ref[f"call{call}_teacher_output"]
        temp = float(temps[int(ref[f"call{call}_epoch"])])
        pure = dino_loss(s, t, center, temp, cfg["student_temp"], cfg["ncrops"])
        center = update_center(center, t.sum(0, keepdim=True), len(t), cfg["center_momentum"])
        stateful = module(s, t, teacher_temp=temp)
        assert torch.equal(pure, ref[f"call{call}_loss"]), (call, pure, ref[f"call{call}_loss"])
        assert torch.equal(stateful, pure)
        assert torch.equal(center, ref[f"call{call}_center_after"])
        assert torch.equal(module.center, center)


def test_dino_head_matches_official(golden: Path) -> None:
    ref = load_file(str(golden / "dino_head.safetensors"))
    for tag, norm_last in (("normlast_true", True), ("normlast_false", False)):
        head = DINOHead(192, 256, hidden_dim=128, bottleneck_dim=64, norm_last_layer=norm_last).eval()
        state = {k[len(tag) + 1:]: v for k, v in ref.items() if k.startswith(tag + ".")}
        head.load_state_dict(official_head_keys_to_parametrized(state), strict=True)
        gain = head.last_layer.parametrizations.weight.original0
        assert gain.requires_grad is (not norm_last)
        with torch.no_grad():
            out = head(ref["input"])
            weight = head.last_layer.weight
        assert torch.equal(weight, ref[f"last_layer_weight_effective_{tag}"])
        torch.testing.assert_close(out, ref[f"output_{tag}"], atol=1e-6, rtol=0)


def test_head_default_gain_is_one_and_frozen() -> None:
    head = DINOHead(8, 16, hidden_dim=8, bottleneck_dim=4, nlayers=1)
    assert "mlp.weight" in head.state_dict()
    gain = head.last_layer.parametrizations.weight.original0
    assert torch.all(gain == 1) and not gain.requires_grad


def test_ema_foreach_equals_two_op_form() -> None:
    student, teacher = torch.nn.Linear(7, 5), torch.nn.Linear(7, 5)
    expected = [t.detach().clone() for t in teacher.parameters()]
    m = 0.9965857864376269
    for e, s in zip(expected, student.parameters(), strict=True):
        e.mul_(m).add_((1 - m) * s.detach())
    ema_update(teacher, student, m)
    for e, t in zip(expected, teacher.parameters(), strict=True):
        assert torch.equal(e, t)
