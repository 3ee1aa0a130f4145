"""Every command works for a DINOv3 ViT: a tiny random one saved in dinofeat's format, and a golden .pth."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import dinofeat
from dinofeat.cli import main
from dinofeat.features.stores.arrays import load_features
from dinofeat.hub.format import HubConfig, save_pretrained
from dinofeat.models import TokenBackbone
from tests.helpers.common import shared_path
from tests.helpers.dinov3 import TINY_V3
from tests.helpers.evaluation import make_image_folder, save_tiny_model

COMMON = ["--workers", "0", "--no-progress", "--batch-size", "4", "--device", "cpu"]


@pytest.fixture
def v3_model(tmp_path):
    return save_tiny_model(tmp_path / "v3", TINY_V3, resize=40, crop=32, name="tiny-v3")


@pytest.fixture
def folder(tmp_path):
    return make_image_folder(tmp_path / "images", classes=2, per_class=3)


def test_v3_folder_round_trips_with_its_architecture(v3_model, tmp_path):
    model = dinofeat.load(v3_model, device="cpu")
    assert model.backbone.config.family == "dinov3" and model.name == "tiny-v3"
    assert isinstance(model.backbone, TokenBackbone)
    assert json.loads((v3_model / "config.json").read_text())["arch"]["n_storage_tokens"] == 4
    half = save_pretrained(model.backbone, tmp_path / "half", HubConfig(model.backbone.config),
                           dtype=torch.float16)
    periods = dinofeat.load(half, device="cpu").backbone.rope_embed.periods
    assert torch.equal(periods, model.backbone.rope_embed.periods)  # float16 weights, float32 periods


def test_embed_and_attention_commands(v3_model, folder, tmp_path, capsys):
    out = tmp_path / "feats.npy"
    assert main(["embed", str(folder), "-m", str(v3_model), "-o", str(out), "--device", "cpu",
                 "--workers", "0"]) == 0
    features, files = load_features(out)
    assert features.shape == (6, 32) and len(files) == 6
    figure = tmp_path / "attention.png"
    assert main(["attention", str(folder / "class_0"), "-m", str(v3_model), "-o", str(figure),
                 "--size", "64", "96", "--device", "cpu"]) == 0
    assert figure.stat().st_size > 0
    assert "(2 heads, 4x6 patches)" in capsys.readouterr().err


def test_knn_index_search_and_dedup_commands(v3_model, folder, tmp_path):
    knn = tmp_path / "knn.json"
    assert main(["knn", "--model", str(v3_model), "--train", str(folder), "--val", str(folder),
                 "--k", "1", "-o", str(knn), *COMMON]) == 0
    assert json.loads(knn.read_text())
    index = tmp_path / "index"
    assert main(["index", str(folder), "-o", str(index), "--model", str(v3_model), "--gem", *COMMON]) == 0
    results = tmp_path / "search.json"
    query = folder / "class_1" / "img_0.png"
    assert main(["search", str(index), str(query), "--top", "1", "--json", str(results), *COMMON]) == 0
    assert str(query) in results.read_text()
    shutil.copy(query, folder / "class_1" / "copy.png")
    groups = tmp_path / "dups.json"
    assert main(["dedup", str(folder), "--threshold", "0.999", "--model", str(v3_model), "--json",
                 str(groups), *COMMON]) == 0
    found = json.loads(groups.read_text())["groups"]
    assert any({"img_0.png", "copy.png"} <= {p.rsplit("/", 1)[1] for p in group} for group in found)


def test_embed_command_refuses_a_pth_that_does_not_fit_the_zoo_arch(tmp_path, folder, capsys):
    golden = shared_path("golden", "dinov3") / "v3_mlp.pth"
    out = tmp_path / "f.npy"
    # The golden is not ViT-S/16: the zoo architecture refuses it, naming the keys.
    assert main(["embed", str(folder), "-m", str(golden), "--arch", "dinov3_vits16", "-o", str(out),
                 "--device", "cpu", "--workers", "0"]) == 2
    assert "shape mismatches" in capsys.readouterr().err


def test_dense_commands(v3_model, folder, tmp_path):
    from PIL import Image

    images = sorted((folder / "class_0").iterdir())[:2]
    runs = {
        "pca": ["pca", *map(str, images), "--mask", "attention"],
        "similarity": ["similarity", str(images[0]), "--point", "5", "5", "--target", str(images[1])],
        "match": ["match", str(images[0]), str(images[1])],
        "segment": ["segment", *map(str, images), "--k", "2"],
    }
    for name, args in runs.items():
        out = tmp_path / f"{name}.png"
        options = ["-m", str(v3_model), "-o", str(out), "--size", "64", "--device", "cpu"]
        assert main([*args, *options]) == 0, name
        assert Image.open(out).size[0] > 0


def test_overlapping_patches_through_the_extractor(v3_model):
    model = dinofeat.load(v3_model, device="cpu")
    x = torch.randn(1, 3, 40, 48)
    assert torch.equal(model.patch_tokens(x, stride=16), model.patch_tokens(x))  # patch size 16
    out = model.features(x, outputs=("patches", "attention", "registers"), stride=8)
    assert out["patches"].shape == (1, 4, 5, 32) and out["attention"].shape == (1, 2, 4, 5)
    assert out["registers"].shape == (1, 4, 32)
