"""Equality with the official DINOv3 ViT (../shared/golden/dinov3): every model, every size, every output."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import dinofeat
from dinofeat.models import arch_from_dict, build_backbone
from tests.helpers.common import shared_path
from tests.helpers.dinov3 import golden_arch, golden_meta

TOL = 1e-5
VIT_GOLDENS = ["v3_mlp", "v3_swiglu", "v3_7b_like", "v3_periods_p8"]


@pytest.fixture(scope="module")
def golden3():
    return shared_path("golden", "dinov3")


@pytest.fixture(scope="module")
def inputs(golden3):
    return load_file(str(golden3 / "inputs.safetensors"))


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def _diffs(out, ref: dict, case: str, n: int) -> dict[str, float]:
    """Max abs difference of every golden tensor of ``case`` against one ``forward_tokens`` output."""
    prefix = out.num_prefix
    diffs = {
        "cls": _max_diff(out.cls, ref[f"{case}.cls"]),
        "patch_tokens": _max_diff(out.patches, ref[f"{case}.patch_tokens"]),
        "cls_attention_all_keys": _max_diff(out.cls_attention, ref[f"{case}.cls_attention_all_keys"]),
    }
    for i, layer in enumerate(out.intermediates):
        diffs[f"last{n}.{i}.cls"] = _max_diff(layer[:, 0], ref[f"{case}.last{n}.{i}.cls"])
        diffs[f"last{n}.{i}.patches"] = _max_diff(layer[:, prefix:], ref[f"{case}.last{n}.{i}.patches"])
    if f"{case}.storage_tokens" in ref:
        diffs["storage_tokens"] = _max_diff(out.registers, ref[f"{case}.storage_tokens"])
    else:
        assert out.registers.shape[1] == 0
    return diffs


@pytest.mark.parametrize("name", VIT_GOLDENS)
def test_every_output_matches_official_at_every_size(golden3, inputs, name):
    model = dinofeat.load(golden3 / f"{name}.pth", arch=golden_arch(name), device="cpu")
    ref = load_file(str(golden3 / f"{name}_outputs.safetensors"))
    depth = model.backbone.depth
    n = min(4, depth)
    for case in golden_meta()["models"][name]["cases"]:
        with torch.no_grad():
            out = model.backbone.forward_tokens(inputs[case], cls_attention=True,
                                                blocks=range(depth - n, depth))
        assert len(out.intermediates) == n
        diffs = _diffs(out, ref, case, n)
        assert max(diffs.values()) <= TOL, (case, diffs)


@pytest.mark.parametrize("name", VIT_GOLDENS)
def test_extractor_methods_match_official(golden3, inputs, name):
    model = dinofeat.load(golden3 / f"{name}.pth", arch=golden_arch(name), device="cpu")
    ref = load_file(str(golden3 / f"{name}_outputs.safetensors"))
    prefix = 1 + model.backbone.config.n_storage_tokens
    n = min(4, model.backbone.depth)
    case = "224x320"
    x = inputs[case]
    layers = model.intermediate_layers(x, n=n)
    diffs = {
        "embed": _max_diff(model.embed(x), ref[f"{case}.cls"]),
        "patch_tokens": _max_diff(model.patch_tokens(x, flatten=True), ref[f"{case}.patch_tokens"]),
        "cls_attention": _max_diff(model.cls_attention(x), ref[f"{case}.cls_attention"]),
        "intermediate_cls": max(_max_diff(layers[i][:, 0], ref[f"{case}.last{n}.{i}.cls"]) for i in range(n)),
        "intermediate_patches": max(_max_diff(layers[i][:, prefix:], ref[f"{case}.last{n}.{i}.patches"])
                                    for i in range(n)),
    }
    assert max(diffs.values()) <= TOL, diffs


def test_periods_come_from_the_file_and_survive_dtype_casts(golden3):
    state = torch.load(golden3 / "v3_mlp.pth", weights_only=True)
    stored = state["rope_embed.periods"]
    assert torch.equal(stored, stored.bfloat16().float())  # the bf16-rounded golden
    model = dinofeat.load(golden3 / "v3_mlp.pth", arch=golden_arch("v3_mlp"), device="cpu")
    rope = model.backbone.rope_embed
    assert torch.equal(rope.periods, stored)
    swiglu = dinofeat.load(golden3 / "v3_swiglu.pth", arch=golden_arch("v3_swiglu"), device="cpu")
    fp32_periods = torch.load(golden3 / "v3_swiglu.pth", weights_only=True)["rope_embed.periods"]
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        swiglu.to(dtype=dtype)
        assert swiglu.backbone.rope_embed.periods.dtype == torch.float32
        assert torch.equal(swiglu.backbone.rope_embed.periods, fp32_periods)
        assert swiglu.backbone.patch_embed.proj.weight.dtype == dtype


def test_bf16_model_keeps_float32_rope_and_stays_close(golden3, inputs):
    model = dinofeat.load(golden3 / "v3_mlp.pth", arch=golden_arch("v3_mlp"), device="cpu",
                          dtype=torch.bfloat16)
    ref = load_file(str(golden3 / "v3_mlp_outputs.safetensors"))
    cls = model.embed(inputs["112x112"])
    assert cls.dtype == torch.float32
    assert _max_diff(cls, ref["112x112.cls"]) < 0.1  # bf16 weights: close, not exact


def test_sides_not_multiple_of_the_patch_are_floor_cropped(golden3, inputs):
    model = dinofeat.load(golden3 / "v3_mlp.pth", arch=golden_arch("v3_mlp"), device="cpu")
    ref = load_file(str(golden3 / "v3_mlp_outputs.safetensors"))
    x = inputs["224x320"]
    padded = torch.cat([x, torch.randn(2, 3, 224, 15)], dim=3)
    padded = torch.cat([padded, torch.randn(2, 3, 9, 335)], dim=2)  # 233 x 335: still a 14 x 20 grid
    assert _max_diff(model.embed(padded), ref["224x320.cls"]) <= TOL
    assert model.patch_tokens(padded).shape == (2, 14, 20, 64)


def test_image_smaller_than_one_patch_is_a_clear_error():
    model = dinofeat.load({"family": "dinov3", "embed_dim": 32, "depth": 1, "num_heads": 2}, device="cpu")
    with pytest.raises(ValueError, match="smaller than one 16x16 patch"):
        model.embed(torch.randn(1, 3, 15, 64))
    with pytest.raises(ValueError, match=r"expected images of shape \(N, 3, H, W\)"):
        model.backbone(torch.randn(1, 4, 32, 32))


def test_golden_state_dicts_load_strictly_as_they_are(golden3):
    for name in VIT_GOLDENS:
        backbone = build_backbone(arch_from_dict(golden_arch(name)))
        state = torch.load(golden3 / f"{name}.pth", weights_only=True)
        assert set(backbone.state_dict()) == set(state), name
