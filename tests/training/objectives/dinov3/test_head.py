"""The DINOv3 head against the official one: state-dict keys, outputs with and without the last layer."""

from __future__ import annotations

import pytest
import torch

from dinofeat.training.objectives.dinov3.head import DINOv3Head
from tests.helpers.dinov3_train import assert_rel_close, golden_json, golden_tensors
from tests.helpers.dinov3_train_step import head_from_state


def test_heads_of_every_depth_match_official():
    ref, meta = golden_tensors("dino_head"), golden_json()["dino_head"]
    assert meta
    for tag, info in meta.items():
        prefix = f"{tag}.weights."
        weights = {k[len(prefix):]: v for k, v in ref.items() if k.startswith(prefix)}
        assert sorted(weights) == sorted(info["keys"])
        head = head_from_state(weights).eval()
        assert len([k for k in weights if k.startswith("mlp") and k.endswith("weight")]) == info["nlayers"]
        with torch.no_grad():
            assert_rel_close(head(ref["input"]), ref[f"{tag}.output"], f"{tag}.output")
            assert_rel_close(head(ref["input"], no_last_layer=True), ref[f"{tag}.output_no_last_layer"],
                             f"{tag}.output_no_last_layer")


def test_last_layer_is_plain_and_every_linear_starts_trunc_normal():
    torch.manual_seed(0)
    head = DINOv3Head(64, 4096, hidden_dim=256, bottleneck_dim=128, nlayers=3, use_bn=True)
    assert sorted(k for k in head.state_dict() if k.startswith("last_layer")) == ["last_layer.weight"]
    assert not hasattr(head.last_layer, "parametrizations") and head.last_layer.bias is None
    assert [type(m).__name__ for m in head.mlp] == ["Linear", "BatchNorm1d", "GELU"] * 2 + ["Linear"]
    for linear in (m for m in head.modules() if isinstance(m, torch.nn.Linear)):
        weight = linear.weight.detach()
        assert abs(weight.std().item() - 0.02) < 0.002  # trunc_normal_'s bounds are +-2, far out
        assert linear.bias is None or not linear.bias.any()
    out = head(torch.randn(5, 64), no_last_layer=True)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(5))
    with pytest.raises(ValueError, match="nlayers must be >= 1"):
        DINOv3Head(8, 8, nlayers=0)
