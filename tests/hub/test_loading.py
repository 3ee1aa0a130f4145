"""dinofeat.load: zoo names over a loopback Hub, hf-hub: repos, folders, bare files, errors. No network."""

from __future__ import annotations

import json

import huggingface_hub.constants as hf_constants
import pytest
import torch
from safetensors.torch import load_file, save

import dinofeat
from dinofeat import registry
from dinofeat.hub import download
from dinofeat.hub.format import HubConfig, save_pretrained
from dinofeat.models import arch_from_dict, build_backbone
from dinofeat.models.vit.config import ViTConfig
from dinofeat.registry import HubSource, ModelSpec
from tests.helpers.common import TINY_VIT
from tests.helpers.hub_server import COMMIT

TOL = 1e-5
TINY = arch_from_dict(TINY_VIT)
GOLDEN_ARCH = {"patch_size": 16, "embed_dim": 192, "depth": 4, "num_heads": 3}


def _state_bytes(model: torch.nn.Module) -> bytes:
    return save({k: v.contiguous() for k, v in model.state_dict().items()})


def _go_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)


def _tiny_zoo_entry(monkeypatch, **source):
    spec = ModelSpec(name="tiny_test", arch=TINY, source=HubSource(**source), description="test")
    monkeypatch.setitem(registry.ZOO, "tiny_test", spec)
    return spec


def test_zoo_name_downloads_pinned_revision_then_works_offline_from_cache(online_hub, monkeypatch):
    reference = build_backbone(TINY).eval()
    online_hub.add("timm/tiny", "model.safetensors", _state_bytes(reference))
    _tiny_zoo_entry(monkeypatch, repo_id="timm/tiny", revision=COMMIT)
    x = torch.randn(2, 3, 32, 32)
    model = dinofeat.load("tiny_test", device="cpu")
    assert any(f"/timm/tiny/resolve/{COMMIT}/model.safetensors" in r for r in online_hub.requests)
    assert torch.equal(model.embed(x), reference(x))
    _go_offline(monkeypatch)
    seen = len(online_hub.requests)
    again = dinofeat.load("tiny_test", device="cpu")
    assert len(online_hub.requests) == seen  # served from the cache
    assert torch.equal(again.embed(x), reference(x))


def test_offline_and_not_cached_says_so_and_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    _go_offline(monkeypatch)
    _tiny_zoo_entry(monkeypatch, repo_id="timm/tiny", revision="main")
    with pytest.raises(dinofeat.OfflineModelError) as info:
        dinofeat.load("tiny_test", device="cpu")
    message = str(info.value)
    assert "not cached" in message and "timm/tiny" in message
    assert "hf download timm/tiny model.safetensors" in message and "unset HF_HUB_OFFLINE" in message


def test_saved_model_files_are_world_readable(tmp_path):
    folder = save_pretrained(build_backbone(TINY), tmp_path / "repo", HubConfig(arch=TINY))
    modes = {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()}
    assert modes == {"config.json": 0o644, "model.safetensors": 0o644, "README.md": 0o644}


def test_hf_hub_dinofeat_repo_with_revision(online_hub, tmp_path):
    reference = build_backbone(TINY).eval()
    folder = save_pretrained(reference, tmp_path / "repo", HubConfig(arch=TINY, name="tiny-repo"))
    for name in ("config.json", "model.safetensors"):
        online_hub.add("org/tiny", name, (folder / name).read_bytes())
    model = dinofeat.load("hf-hub:org/tiny@v1", device="cpu")
    assert any("/org/tiny/resolve/v1/config.json" in r for r in online_hub.requests)
    assert model.name == "tiny-repo"
    x = torch.randn(1, 3, 32, 40)
    assert torch.equal(model.embed(x), reference(x))


def test_prepopulated_cache_offline_serves_transformers_repo(online_hub, tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                    intermediate_size=128, image_size=32, patch_size=8)
    hf_model = transformers.ViTModel(config).eval()
    hf_model.save_pretrained(tmp_path / "tf")
    for name in ("config.json", "model.safetensors"):
        online_hub.add("facebook/dino-tiny", name, (tmp_path / "tf" / name).read_bytes())
    download.hf_file("facebook/dino-tiny", "config.json")  # populate the cache ...
    download.hf_file("facebook/dino-tiny", "model.safetensors")
    _go_offline(monkeypatch)  # ... then load with no Hub access
    model = dinofeat.load("hf-hub:facebook/dino-tiny", device="cpu")
    assert model.backbone.config.layer_norm_eps == 1e-12
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = hf_model(pixel_values=x).last_hidden_state[:, 0]
    assert (model.embed(x) - expected).abs().max() <= TOL


@pytest.mark.parametrize("kind", ["dinov2", "dinov2_swiglu", "dinov2_registers"])
def test_transformers_dinov2_folder_matches_transformers(tmp_path, kind):
    transformers = pytest.importorskip("transformers")
    common = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 28,
              "patch_size": 14, "layerscale_value": 0.5}
    if kind == "dinov2_registers":
        hf_model = transformers.Dinov2WithRegistersModel(transformers.Dinov2WithRegistersConfig(**common))
    else:
        hf_model = transformers.Dinov2Model(
            transformers.Dinov2Config(**common, use_swiglu_ffn=kind == "dinov2_swiglu"))
    hf_model.eval().save_pretrained(tmp_path)
    model = dinofeat.load(tmp_path, device="cpu")
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        expected = hf_model(pixel_values=x).last_hidden_state[:, 0]
    assert (model.embed(x) - expected).abs().max() <= TOL
    assert model.cls_attention(x).shape == (2, 2, 2, 2)


def test_flat_pth_state_dict(golden, tmp_path):
    state = load_file(str(golden / "vit_p16_d192.safetensors"))
    torch.save(state, tmp_path / "dino_tiny16_pretrain.pth")
    ref = load_file(str(golden / "vit_p16_outputs.safetensors"))
    model = dinofeat.load(tmp_path / "dino_tiny16_pretrain.pth", arch=GOLDEN_ARCH, device="cpu")
    assert (model.embed(ref["x224"]) - ref["x224_cls"]).abs().max() <= TOL


@pytest.mark.parametrize("key", ["teacher", "student"])
def test_official_full_checkpoint(golden, key):
    ref = load_file(str(golden / "vit_p16_outputs.safetensors"))
    expected = load_file(str(golden / "dino_full_checkpoint_p16_outputs.safetensors"))
    model = dinofeat.load(golden / "dino_full_checkpoint_p16.pth", arch=ViTConfig(**GOLDEN_ARCH),
                          checkpoint_key=key, device="cpu")
    assert (model.embed(ref["x224"]) - expected[f"{key}_backbone_cls_x224"]).abs().max() <= TOL


class Payload:
    """Stands for any pickled object beyond the official checkpoint's Namespace and numpy scalars."""


def test_pth_with_other_pickled_objects_is_refused(tmp_path):
    torch.save({"cls_token": torch.zeros(1), "evil": Payload()}, tmp_path / "bad.pth")
    with pytest.raises(dinofeat.WeightsMismatchError, match="will not unpickle"):
        dinofeat.load(tmp_path / "bad.pth", arch=TINY_VIT)


def test_empty_garbage_and_truncated_pth_files_are_named_errors(tmp_path):
    torch.save({"cls_token": torch.zeros(8)}, tmp_path / "good.pth")
    whole = (tmp_path / "good.pth").read_bytes()
    cases = {"empty.pth": (b"", "is empty"),
             "text.pth": (b"<html>not found</html>", "not a torch checkpoint"),
             "truncated.pth": (whole[: len(whole) // 2], "truncated or corrupt")}
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(dinofeat.WeightsMismatchError, match=f"{name}.*{message}"):
            dinofeat.load(tmp_path / name, arch=TINY_VIT)


def test_official_dinov2_register_keys_convert(tmp_path):
    arch = ViTConfig(patch_size=14, embed_dim=32, depth=1, num_heads=2, img_size=28, num_register_tokens=4,
                     layer_scale_init=1e-5, pos_embed_has_cls=False, mlp="swiglu", mlp_ratio=2.66667 * 2)
    reference = build_backbone(arch).eval()
    with torch.no_grad():  # the init's tiny CLS / LayerScale values would make the check meaningless
        for name, param in reference.named_parameters():
            if name in ("cls_token", "reg_token") or name.endswith("gamma"):
                param.normal_()
    official = {}
    for key, value in reference.state_dict().items():
        key = key.replace("reg_token", "register_tokens")
        key = key.replace("mlp.fc1", "mlp.w12").replace("mlp.fc2", "mlp.w3")
        official[key] = value.clone()
    cls_pos = torch.randn(1, 1, 32)
    official["pos_embed"] = torch.cat([cls_pos, official["pos_embed"]], dim=1)
    official["cls_token"] = official["cls_token"] - cls_pos
    official["mask_token"] = torch.zeros(1, 32)
    torch.save(official, tmp_path / "dinov2_tiny_reg4_pretrain.pth")
    model = dinofeat.load(tmp_path / "dinov2_tiny_reg4_pretrain.pth", arch=arch, device="cpu")
    x = torch.randn(1, 3, 28, 28)
    assert (model.embed(x) - reference(x)).abs().max() <= 1e-6


def test_url_entry_reads_torch_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch-hub"))
    _go_offline(monkeypatch)
    reference = build_backbone(TINY).eval()
    state = dict(reference.state_dict())
    (tmp_path / "torch-hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "torch-hub" / "checkpoints" / "tiny_pretrain.pth")
    _tiny_zoo_entry(monkeypatch, url="https://example.invalid/dino/tiny_pretrain.pth")
    model = dinofeat.load("tiny_test", device="cpu")
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(model.embed(x), reference(x))
    _tiny_zoo_entry(monkeypatch, url="https://example.invalid/dino/other.pth")
    with pytest.raises(dinofeat.OfflineModelError, match="not cached"):
        dinofeat.load("tiny_test", device="cpu")


def test_bundled_package_path_loads_with_no_network(tmp_path, monkeypatch):
    reference = build_backbone(TINY).eval()
    save_pretrained(reference, tmp_path / "bundled" / "tiny", HubConfig(arch=TINY, name="bundled-tiny"))
    monkeypatch.setattr(download.importlib.resources, "files", lambda package: tmp_path)
    _go_offline(monkeypatch)
    _tiny_zoo_entry(monkeypatch, package_path="bundled/tiny")
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(dinofeat.load("tiny_test", device="cpu").embed(x), reference(x))


def test_broken_config_json_names_the_file_and_the_problem(tmp_path):
    folder = save_pretrained(build_backbone(TINY), tmp_path / "model", HubConfig(arch=TINY))
    config = json.loads((folder / "config.json").read_text())
    for arch, message in (({"patch_size": 8}, r"lacks \['embed_dim', 'depth', 'num_heads'\]"),
                          ({**config["arch"], "num_heads": 3}, "divisible by num_heads"),
                          (None, "has no 'arch' object")):
        (folder / "config.json").write_text(json.dumps({**config, "arch": arch}))
        with pytest.raises(ValueError, match=r"config\.json.*" + message):
            dinofeat.load(folder)


def test_mismatched_weights_name_the_keys(tmp_path):
    state = dict(build_backbone(TINY).state_dict())
    del state["norm.weight"]
    state["blocks.0.extra"] = torch.zeros(1)
    state["cls_token"] = torch.zeros(1, 1, 16)
    torch.save(state, tmp_path / "w.pth")
    with pytest.raises(dinofeat.WeightsMismatchError) as info:
        dinofeat.load(tmp_path / "w.pth", arch=TINY_VIT)
    message = str(info.value)
    assert "norm.weight" in message and "blocks.0.extra" in message and "cls_token" in message


def test_dinofeat_folder_with_wrong_config_arch_is_a_mismatch(tmp_path):
    save_pretrained(build_backbone(TINY), tmp_path, HubConfig(arch=TINY))
    config = json.loads((tmp_path / "config.json").read_text())
    config["arch"]["depth"] = 3
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(dinofeat.WeightsMismatchError, match=r"blocks\.2\."):
        dinofeat.load(tmp_path)


def test_unknown_name_suggests_close_matches():
    with pytest.raises(KeyError, match="vit_s16"):
        dinofeat.load("vit_s17")


def test_bare_file_needs_arch_and_missing_file_is_named(tmp_path):
    torch.save({}, tmp_path / "w.pth")
    with pytest.raises(ValueError, match="arch="):
        dinofeat.load(tmp_path / "w.pth")
    with pytest.raises(FileNotFoundError, match=r"nope\.pth"):
        dinofeat.load(tmp_path / "nope.pth", arch=TINY_VIT)


def test_hf_hub_source_syntax_is_checked():
    with pytest.raises(ValueError, match="org/repo"):
        dinofeat.load("hf-hub:just-a-name")


def test_device_dtype_and_arch_arguments_are_checked(tmp_path):
    if not torch.cuda.is_available():
        with pytest.raises(dinofeat.SetupError, match="asks for CUDA but no CUDA device is available"):
            dinofeat.load(TINY_VIT, device="cuda")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        dinofeat.load(TINY_VIT, device="tpu")
    for dtype in ("float16", torch.int8):
        with pytest.raises(TypeError, match="dtype must be a floating torch dtype"):
            dinofeat.load(TINY_VIT, device="cpu", dtype=dtype)  # type: ignore[arg-type]
    folder = save_pretrained(build_backbone(TINY), tmp_path / "model", HubConfig(arch=TINY))
    for source in ("vit_s16", folder):
        with pytest.raises(ValueError, match="arch= is for a bare weights file"):
            dinofeat.load(source, arch="vit_s8", pretrained=False, device="cpu")


def test_pretrained_false_randomises_a_folder_and_keeps_its_preprocessing(tmp_path):
    """`dinofeat knn --random-init --model FOLDER` is the untrained baseline of a trained model."""
    arch = ViTConfig(**TINY_VIT)
    trained = build_backbone(arch)
    with torch.no_grad():
        trained.cls_token.fill_(3.0)
    config = HubConfig(arch=arch, preprocess=dinofeat.config.preprocess.PreprocessConfig(resize=40, crop=32))
    folder = save_pretrained(trained, tmp_path / "model", config)
    torch.manual_seed(0)
    random_model = dinofeat.load(folder, pretrained=False, device="cpu")
    torch.manual_seed(0)
    expected = build_backbone(arch)
    assert random_model.preprocess.crop == 32 and random_model.backbone.config == arch
    state = random_model.backbone.state_dict()
    assert all(torch.equal(value, state[key]) for key, value in expected.state_dict().items())
    assert not torch.equal(state["cls_token"], trained.cls_token)
    assert torch.equal(dinofeat.load(folder, device="cpu").backbone.cls_token, trained.cls_token)
