"""A DINOv3 ConvNeXt end to end: zoo weights in timm's layout and an HF transformers repository over the
loopback Hub, and the CLI (embed, knn, index / search; attention refused)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save

import dinofeat
from dinofeat import registry
from dinofeat.cli import main
from dinofeat.models import arch_from_dict, build_backbone
from dinofeat.registry import HubSource, ModelSpec
from tests.helpers.convnext_layouts import TINY, official_to_timm, official_to_transformers
from tests.helpers.evaluation import make_image_folder, save_tiny_model
from tests.helpers.hub_server import (
    COMMIT,
)

COMMON = ["--workers", "0", "--no-progress", "--batch-size", "4"]


def _reference() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_backbone(arch_from_dict(TINY)).eval()


def _bytes(state: dict[str, torch.Tensor]) -> bytes:
    return save({key: value.contiguous() for key, value in state.items()})


def test_zoo_entry_in_timm_layout_over_the_hub(online_hub, monkeypatch):
    reference = _reference()
    online_hub.add("timm/convnext_test.dinov3", "model.safetensors",
                   _bytes(official_to_timm(reference.state_dict())))
    source = HubSource(repo_id="timm/convnext_test.dinov3", revision=COMMIT)
    spec = ModelSpec(name="convnext_test", arch=arch_from_dict(TINY), source=source, description="test")
    monkeypatch.setitem(registry.ZOO, spec.name, spec)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(dinofeat.load("convnext_test", device="cpu").embed(x), reference(x))


def test_transformers_repo_over_the_hub(online_hub):
    reference = _reference()
    config = {"model_type": "dinov3_convnext", "architectures": ["DINOv3ConvNextModel"],
              "depths": [1, 1, 1, 1], "hidden_sizes": [8, 16, 24, 32], "hidden_act": "gelu",
              "layer_norm_eps": 1e-6, "layer_scale_init_value": 1e-6, "num_channels": 3}
    online_hub.add("facebook/dinov3-convnext-test", "config.json", json.dumps(config).encode())
    online_hub.add("facebook/dinov3-convnext-test", "model.safetensors",
                   _bytes(official_to_transformers(reference.state_dict())))
    model = dinofeat.load("hf-hub:facebook/dinov3-convnext-test", device="cpu")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.patch_tokens(x, flatten=True), reference.forward_tokens(x).patches)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("convnext_cli")
    model = save_tiny_model(root / "model", TINY, resize=72, crop=64, name="tiny-convnext")
    return model, make_image_folder(root / "train", size=72), make_image_folder(root / "val", size=72, seed=1)


def test_cli_embed_knn_index_search(folders, tmp_path, capsys):
    model, train, val = folders
    out = tmp_path / "f.npy"
    assert main(["embed", str(val), "-o", str(out), "--model", str(model), "--workers", "0"]) == 0
    features = np.load(out)
    files = (tmp_path / "f.txt").read_text().split()
    expected = dinofeat.load(model, device="cpu").embed(files)
    assert features.shape == (9, 32) and np.allclose(features, expected.numpy(), atol=1e-6)
    assert main(["knn", "--model", str(model), "--train", str(train), "--val", str(val), "--k", "1", "3",
                 "-o", str(tmp_path / "knn.json"), *COMMON]) == 0
    assert json.loads((tmp_path / "knn.json").read_text())["feature_dim"] == 32
    index = tmp_path / "index"
    assert main(["index", str(train), "-o", str(index), "--model", str(model), "--gem", *COMMON]) == 0
    query = next(iter(sorted(train.rglob("*.png"))))
    assert main(["search", str(index), str(query), "--top", "1", "--json", str(tmp_path / "hits.json"),
                 *COMMON]) == 0
    hits = json.loads((tmp_path / "hits.json").read_text())
    assert hits[0]["results"][0]["path"].endswith(query.name)  # an indexed image finds itself first


def test_cli_attention_on_a_convnext_is_a_clear_error(folders, tmp_path, capsys):
    model, _, val = folders
    status = main(["attention", str(next(iter(sorted(val.rglob("*.png"))))), "-o", str(tmp_path / "a.png"),
                   "--model", str(model)])
    assert status == 2
    assert "cls_attention needs a Vision Transformer" in capsys.readouterr().err
    assert not (tmp_path / "a.png").exists()
