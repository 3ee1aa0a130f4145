"""The DINOv3 ViT zoo entries: builds without weights, strict key sets of the released files, gated repos."""

from __future__ import annotations

import json

import huggingface_hub.constants as hf_constants
import pytest
import torch
from safetensors.torch import save

import dinofeat
from dinofeat import registry
from dinofeat.hub.entrypoints import ENTRYPOINTS, entrypoint_name
from dinofeat.models import arch_from_dict, build_backbone
from dinofeat.models.dinov3.rope import released_periods
from dinofeat.registry import HubSource, ModelSpec
from tests.helpers.common import REPO_ROOT, shared_path
from tests.helpers.dinov3 import TINY_V3

V3_VITS = ["dinov3_vits16", "dinov3_vits16plus", "dinov3_vitb16", "dinov3_vitl16", "dinov3_vith16plus",
           "dinov3_vit7b16", "dinov3_vitl16_sat", "dinov3_vit7b16_sat"]


def _meta_backbone(name):
    with torch.device("meta"):
        return build_backbone(dinofeat.get_spec(name).arch)


def test_every_dinov3_vit_is_in_the_zoo_with_its_licence_and_preprocessing():
    specs = dinofeat.list_models(family="dinov3")
    assert [spec.name for spec in specs] == V3_VITS
    for spec in specs:
        assert spec.license.startswith("dinov3-license") and "gated" in spec.license
        assert spec.source.repo_id.startswith("timm/vit_") and "dinov3" in spec.source.repo_id
        assert spec.source.url.endswith(".pth") and spec.name.removesuffix("_sat") in spec.source.url
        sat = spec.name.endswith("_sat")
        assert spec.source.repo_id.endswith(".sat493m" if sat else ".lvd1689m")
        assert spec.preprocess.mean == ((0.430, 0.411, 0.296) if sat else (0.485, 0.456, 0.406))
        assert spec.preprocess.std == ((0.213, 0.156, 0.143) if sat else (0.229, 0.224, 0.225))
        assert (spec.preprocess.resize, spec.preprocess.crop) == (256, 224)
    assert all(spec.arch.family == "vit" for spec in dinofeat.list_models(family="vit"))
    with pytest.raises(ValueError, match="unknown architecture family 'dinov4'"):
        dinofeat.list_models(family="dinov4")


@pytest.mark.parametrize("name", V3_VITS)
def test_entry_builds_on_the_meta_device_with_the_published_size(name):
    backbone = _meta_backbone(name)
    params = sum(p.numel() for p in backbone.parameters()) / 1e6
    assert params == pytest.approx(dinofeat.get_spec(name).params_millions, abs=0.1)


def test_small_entry_builds_for_real_and_runs_without_weights():
    model = dinofeat.load("dinov3_vits16", pretrained=False, device="cpu")
    x = torch.randn(1, 3, 32, 48)
    assert model.embed(x).shape == (1, 384)
    assert model.cls_attention(x).shape == (1, 6, 2, 3)
    assert torch.equal(model.backbone.rope_embed.periods.bfloat16().float(), released_periods(64))


def test_released_key_sets_map_onto_the_backbones_strictly():
    released = json.loads((shared_path("golden", "dinov3") / "released_checkpoint_keys.json").read_text())
    vits = [name for name in released if "convnext" not in name]
    assert vits == [name for name in V3_VITS if not name.endswith("_sat")]
    for name in vits:
        state = _meta_backbone(name).state_dict()
        listed = released[name]["keys"]
        assert len(state) == released[name]["n_keys"], name
        ours = {k: list(v.shape) for k, v in state.items() if not k.startswith("blocks.") or
                k.startswith("blocks.0.")}
        assert ours == listed, name
    # The SAT ViT-L is the LVD one plus the training-only local_cls_norm (official builder).
    sat = set(_meta_backbone("dinov3_vitl16_sat").state_dict())
    assert sat - set(_meta_backbone("dinov3_vitl16").state_dict()) == {"local_cls_norm.weight",
                                                                         "local_cls_norm.bias"}


def test_official_hub_names_are_entry_points_and_load_through_torch_hub():
    for name in V3_VITS:
        assert entrypoint_name(name) == name and name in ENTRYPOINTS
    model = torch.hub.load(str(REPO_ROOT), "dinov3_vits16", source="local", pretrained=False)
    assert isinstance(model, dinofeat.FeatureExtractor)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 384)
    assert "DINOv3 ViT-S/16" in ENTRYPOINTS["dinov3_vits16"].__doc__


def test_models_command_shows_the_licence(capsys):
    from dinofeat.cli import main

    assert main(["models"]) == 0
    line = next(row for row in capsys.readouterr().out.splitlines() if row.startswith("dinov3_vitb16 "))
    assert "licence: dinov3-license" in line and "gated" in line


@pytest.fixture
def gated_hub(request, tmp_path, monkeypatch):
    """test_loading's loopback Hub, with no token from the environment or a token file."""
    hub = request.getfixturevalue("online_hub")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    return hub


def test_gated_repo_without_token_or_access_is_one_clear_error(gated_hub, monkeypatch):
    repo = dinofeat.get_spec("dinov3_vitb16").source.repo_id
    gated_hub.gate(repo)
    with pytest.raises(dinofeat.GatedModelError) as info:
        dinofeat.load("dinov3_vitb16", device="cpu")
    message = str(info.value)
    assert f"Hub repository {repo} is gated" in message and "no Hugging Face token was sent" in message
    assert f"https://huggingface.co/{repo}" in message and "DINOv3 License" in message
    assert "hf auth login" in message and "HF_TOKEN" in message
    monkeypatch.setenv("HF_TOKEN", "hf_without_access")
    with pytest.raises(dinofeat.GatedModelError, match="the token sent has no access to it yet"):
        dinofeat.load("dinov3_vitb16", device="cpu")


def test_gated_timm_repo_with_access_loads_through_the_timm_layout(gated_hub, monkeypatch):
    arch = arch_from_dict(TINY_V3)
    reference = build_backbone(arch).eval()
    official = reference.state_dict()
    dropped = ("mask_token", "rope_embed.periods", "qkv.bias", "bias_mask")  # as timm's filter drops them
    timm_state = {k.replace("storage_tokens", "reg_token").replace("ls1.gamma", "gamma_1")
                  .replace("ls2.gamma", "gamma_2"): v.contiguous() for k, v in official.items()
                  if not k.endswith(dropped)}
    gated_hub.add("timm/tiny_dinov3.lvd1689m", "model.safetensors", save(timm_state))
    gated_hub.gate("timm/tiny_dinov3.lvd1689m", authorised_tokens=("hf_granted",))
    spec = ModelSpec(name="tiny_v3", arch=arch, source=HubSource(repo_id="timm/tiny_dinov3.lvd1689m"),
                     description="test", license=registry.DINOV3_LICENSE)
    monkeypatch.setitem(registry.ZOO, "tiny_v3", spec)
    monkeypatch.setenv("HF_TOKEN", "hf_granted")
    model = dinofeat.load("tiny_v3", device="cpu")
    assert torch.equal(model.backbone.rope_embed.periods, released_periods(16))
    with torch.no_grad():
        reference.rope_embed.periods.copy_(released_periods(16))
    x = torch.randn(2, 3, 48, 64)
    assert (model.embed(x) - reference(x)).abs().max() <= 1e-6
