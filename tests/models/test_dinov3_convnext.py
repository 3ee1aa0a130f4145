"""DINOv3 ConvNeXt: equality with the official code (../shared/golden/dinov3), the three weight layouts,
strict loading of the released key sets, the zoo entries and the token interface."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import load_file, save_file
from timm.models.convnext import ConvNeXt

import dinofeat
from dinofeat.evaluation.linear import linear_probe_features
from dinofeat.hub.format import HubConfig, save_pretrained
from dinofeat.models import DinoResNet, TokenBackbone, arch_from_dict, build_backbone
from dinofeat.models.dinov3_convnext.config import DinoV3ConvNeXtConfig
from dinofeat.models.dinov3_convnext.convert import config_from_transformers, to_official
from dinofeat.registry import list_models
from dinofeat.utils.errors import WeightsMismatchError
from tests.helpers.common import shared_path
from tests.helpers.convnext_layouts import TINY, official_to_timm, official_to_transformers

TOL = 1e-5
CONVNEXTS = [spec for spec in list_models() if isinstance(spec.arch, DinoV3ConvNeXtConfig)]


@pytest.fixture(scope="module")
def golden():
    folder = shared_path("golden", "dinov3")
    kwargs = json.loads((folder / "golden.json").read_text())["models"]["v3_convnext"]["official_kwargs"]
    arch = {"family": "dinov3_convnext", **kwargs}
    model = dinofeat.load(folder / "v3_convnext.pth", arch=arch, device="cpu")
    return (model, load_file(str(folder / "inputs.safetensors")),
            load_file(str(folder / "v3_convnext_outputs.safetensors")), folder)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max())


@pytest.mark.parametrize("size", ["224x224", "224x320", "96x160", "112x112"])
def test_embed_patch_tokens_and_stages_match_official(golden, size):
    model, inputs, ref, _ = golden
    x = inputs[size]
    assert _max_diff(model.embed(x), ref[f"{size}.cls"]) <= TOL
    assert _max_diff(model.patch_tokens(x, flatten=True), ref[f"{size}.patch_tokens"]) <= TOL
    stages = model.intermediate_layers(x, 4)
    assert isinstance(stages, list) and len(stages) == 4  # widths 16 / 32 / 48 / 64 cannot be stacked
    for i, stage in enumerate(stages):
        assert _max_diff(stage[:, 0], ref[f"{size}.last4.{i}.cls"]) <= TOL
        assert _max_diff(stage[:, 1:], ref[f"{size}.last4.{i}.patches"]) <= TOL


def test_token_output_grids_and_stage_selection(golden):
    model, inputs, ref, _ = golden
    x = inputs["224x320"]
    with torch.no_grad():
        out = model.backbone.forward_tokens(x, blocks=[-1, 1])
    assert out.grid == (7, 10) and out.num_prefix == 1 and out.registers.shape == (2, 0, 64)
    assert out.intermediate_grids == [(28, 40), (7, 10)]
    assert _max_diff(out.intermediates[0][:, 1:], ref["224x320.last4.1.patches"]) <= TOL
    assert torch.equal(out.intermediates[1], out.tokens)  # the last stage is the normed output
    last2 = model.intermediate_layers(x, 2)
    assert [tuple(t.shape) for t in last2] == [(2, 1 + 14 * 20, 48), (2, 1 + 7 * 10, 64)]
    assert model.patch_tokens(x).shape == (2, 7, 10, 64) and model.patch_size is None


def test_timm_layout_loads_to_the_same_outputs_and_is_timms(golden, tmp_path):
    model, inputs, _, folder = golden
    official = torch.load(folder / "v3_convnext.pth", weights_only=True)
    timm_state = official_to_timm(official)
    reference = ConvNeXt(depths=(1, 1, 2, 1), dims=(16, 32, 48, 64), num_classes=0).eval()
    reference.load_state_dict(timm_state, strict=True)  # the hand-made layout is timm's own
    save_file(timm_state, str(tmp_path / "timm.safetensors"))
    kwargs = {"family": "dinov3_convnext", "depths": [1, 1, 2, 1], "dims": [16, 32, 48, 64]}
    loaded = dinofeat.load(tmp_path / "timm.safetensors", arch=kwargs, device="cpu")
    x = inputs["224x320"]
    assert torch.equal(loaded.embed(x), model.embed(x))
    with torch.no_grad():
        timm_pooled = reference.forward_head(reference.forward_features(x), pre_logits=True)
    assert _max_diff(timm_pooled, model.embed(x)) <= TOL  # timm's LayerNorm2d: close, not bitwise


def test_transformers_folder_loads_to_the_same_outputs(golden, tmp_path):
    transformers = pytest.importorskip("transformers")
    model, inputs, _, folder = golden
    official = torch.load(folder / "v3_convnext.pth", weights_only=True)
    config = transformers.DINOv3ConvNextConfig(depths=[1, 1, 2, 1], hidden_sizes=[16, 32, 48, 64])
    hf = transformers.DINOv3ConvNextModel(config).eval()
    hf.load_state_dict({f"model.{k}" if k.startswith("stages.") else k: v
                        for k, v in official_to_transformers(official).items()}, strict=True)
    hf.save_pretrained(tmp_path)
    loaded = dinofeat.load(tmp_path, device="cpu")
    x = inputs["224x320"]
    assert torch.equal(loaded.embed(x), model.embed(x))
    with torch.no_grad():
        hf_tokens = hf(pixel_values=x).last_hidden_state
    assert _max_diff(hf_tokens[:, 1:], model.patch_tokens(x, flatten=True)) <= TOL


def test_layouts_convert_by_key_name_and_hf_config_is_read():
    state = {key: torch.randn(2) for key in build_backbone(arch_from_dict(TINY)).state_dict()}
    state.update({f"norms.3.{name}": state[f"norm.{name}"] for name in ("weight", "bias")})  # one module
    assert to_official(state).keys() == state.keys()
    prefixed = {f"model.{k}" if k.startswith("stages.") else k: v
                for k, v in official_to_transformers(state).items()}
    for layout in (official_to_timm(state), official_to_transformers(state), prefixed):
        converted = to_official(layout)
        assert converted.keys() == state.keys()
        assert all(torch.equal(converted[k], state[k]) for k in state)
    hf = {"model_type": "dinov3_convnext", "depths": [1, 1, 1, 1], "hidden_sizes": [8, 16, 24, 32],
          "layer_norm_eps": 1e-6, "layer_scale_init_value": 1e-6, "num_channels": 3}
    assert config_from_transformers(hf) == arch_from_dict(TINY)
    with pytest.raises(ValueError, match="relu"):
        config_from_transformers({**hf, "hidden_act": "relu"})


@pytest.mark.parametrize("spec", CONVNEXTS, ids=lambda s: s.name)
def test_released_key_set_loads_strictly(spec):
    keys_file = shared_path("golden", "dinov3", "released_checkpoint_keys.json")
    released = json.loads(keys_file.read_text())[spec.name]
    with torch.device("meta"):
        backbone = build_backbone(spec.arch)
    shapes = {key: list(value.shape) for key, value in backbone.state_dict().items()}
    assert len(released["keys"]) == released["n_keys"]
    assert shapes == released["keys"]  # nothing missing, nothing unexpected, every shape equal
    params = sum(p.numel() for p in backbone.parameters()) / 1e6
    assert round(params, 1) == released["params_millions"] == spec.params_millions


def test_other_families_weights_are_named_mismatches(tmp_path, golden):
    _, _, _, folder = golden
    with pytest.raises(WeightsMismatchError, match=r"missing keys: downsample_layers.*unexpected.*blocks"):
        dinofeat.load(folder / "v3_mlp.pth", arch=TINY, device="cpu")
    with torch.device("meta"):
        resnet_keys = list(DinoResNet(dinofeat.ResNetConfig()).state_dict())
    torch.save({key: torch.zeros(1) for key in resnet_keys}, tmp_path / "resnet.pth")
    with pytest.raises(WeightsMismatchError, match=r"unexpected keys: .*bn1"):
        dinofeat.load(tmp_path / "resnet.pth", arch=TINY, device="cpu")
    vit = {"patch_size": 16, "embed_dim": 64, "depth": 2, "num_heads": 2}
    with pytest.raises(WeightsMismatchError, match=r"missing keys: blocks.*unexpected keys: downsample"):
        dinofeat.load(folder / "v3_convnext.pth", arch=vit, device="cpu")  # and the reverse


@pytest.mark.parametrize("spec", [pytest.param(s, marks=pytest.mark.slow) if s.params_millions > 30 else s
                                  for s in CONVNEXTS], ids=lambda s: s.name)
def test_zoo_entry_builds_without_weights(spec):
    model = dinofeat.load(spec.name, pretrained=False, device="cpu")
    assert model.embed(torch.randn(1, 3, 32, 64)).shape == (1, spec.embed_dim)
    assert spec.license.startswith("dinov3-license")
    assert spec.source.repo_id == f"timm/{spec.name[7:]}.dinov3_lvd1689m"
    official_file = r"/dinov3_convnext_\w+_pretrain_lvd1689m-[0-9a-f]{8}\.pth$"
    assert spec.source.url is not None and re.search(official_file, spec.source.url)


def test_torch_hub_local_entry_point():
    from tests.helpers.common import REPO_ROOT

    model = torch.hub.load(str(REPO_ROOT), "dinov3_convnext_tiny", source="local", pretrained=False)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), model.embed(x)) and model(x).shape == (1, 768)


def test_config_is_checked_and_round_trips(tmp_path):
    with pytest.raises(ValueError, match=r"unknown architecture config keys \['kernel_size'\]"):
        arch_from_dict({**TINY, "kernel_size": 7})
    with pytest.raises(ValueError, match="depths must be four positive integers"):
        arch_from_dict({**TINY, "depths": [1, 1, 1]})
    config = arch_from_dict(TINY)
    assert config.embed_dim == 32 and arch_from_dict(json.loads(json.dumps(config.to_dict()))) == config
    backbone = build_backbone(config)
    save_pretrained(backbone, tmp_path, HubConfig(config, name="tiny-convnext"))
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(dinofeat.load(tmp_path, device="cpu").embed(x), backbone.eval()(x))


def test_stage_list_feeds_the_linear_probe_features():
    model = dinofeat.load(TINY, device="cpu")
    assert isinstance(model.backbone, TokenBackbone)
    features = linear_probe_features(model, 2, avgpool=True)(torch.randn(3, 3, 64, 64))
    assert features.shape == (3, 24 + 32 + 32)  # the pooled vectors of stages 2 and 3, then the mean patch


def test_no_attention_small_images_and_bad_blocks_are_clear_errors():
    model = dinofeat.load(TINY, device="cpu")
    assert not model.has_attention and model.backbone.depth == 4
    with pytest.raises(TypeError, match="has no attention"):
        model.cls_attention(torch.randn(1, 3, 64, 64))
    with pytest.raises(TypeError, match="ConvNeXt has no attention"):
        model.backbone.forward_tokens(torch.randn(1, 3, 64, 64), cls_attention=True)
    with pytest.raises(ValueError, match=r"at least 32x32 pixels.*got 16x64"):
        model.embed(torch.randn(1, 3, 16, 64))
    with pytest.raises(IndexError, match="out of range for depth 4"):
        model.backbone.forward_tokens(torch.randn(1, 3, 64, 64), blocks=[4])
    with pytest.raises(ValueError, match="between 1 and the depth 4"):
        model.intermediate_layers(torch.randn(1, 3, 64, 64), 5)
