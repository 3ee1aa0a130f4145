"""dinofeat's own model ships inside the package and works with no network and no cache."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import zipfile

import pytest
import torch
from huggingface_hub import constants as hf_constants
from safetensors import safe_open

import dinofeat
from dinofeat.models import arch_from_dict
from dinofeat.registry import BUNDLED_MODEL, get_spec
from tests.helpers.common import REPO_ROOT

BUNDLED_DIR = REPO_ROOT / "dinofeat" / "weights" / BUNDLED_MODEL
SAMPLE = REPO_ROOT / "examples" / "images" / "cat.jpg"


@pytest.fixture
def no_network(tmp_path, monkeypatch):
    """Offline Hub, an empty cache, and any socket connection refused."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))

    def refuse(*args, **kwargs):
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_bundled_folder_is_the_registry_entry():
    config = json.loads((BUNDLED_DIR / "config.json").read_text())
    spec = get_spec(BUNDLED_MODEL)
    assert arch_from_dict(config["arch"]) == spec.arch
    assert config["metadata"]["trained_with"] == "dinofeat-train"
    # The figures the zoo table shows are the ones the trainer's export wrote into the model card.
    evaluation = config["metadata"]["evaluation"]
    assert spec.extra["imagenette_knn20"] == (evaluation["imagenette_val_knn20_top1"],
                                              evaluation["imagenette_val_knn20_top5"])
    assert spec.extra["imagenette_knn20_random_init"] == (evaluation["random_init_knn20_top1"],
                                                          evaluation["random_init_knn20_top5"])
    assert f"{config['metadata']['epochs_done']} epochs" in spec.extra["training_time"]
    weights = BUNDLED_DIR / "model.safetensors"
    assert weights.stat().st_size < 12 * 2**20
    with safe_open(str(weights), "pt") as handle:
        assert {handle.get_tensor(k).dtype for k in handle.keys()} == {torch.float16}  # noqa: SIM118


def test_bundled_model_embeds_with_network_disabled(no_network):
    model = dinofeat.load(BUNDLED_MODEL, device="cpu")
    features = model.embed(SAMPLE)
    assert features.shape == (1, 192) and torch.isfinite(features).all()
    attention = model.cls_attention(SAMPLE, size=(224, 224))
    assert attention.shape == (1, 3, 14, 14)
    assert torch.allclose(attention.sum(dim=(2, 3)), torch.ones(1, 3), atol=0.05)


def test_offline_error_for_a_zoo_model_names_the_bundled_one(no_network):
    with pytest.raises(dinofeat.OfflineModelError) as info:
        dinofeat.load("vit_s16", device="cpu")
    assert BUNDLED_MODEL in str(info.value)


def test_installed_wheel_carries_and_loads_the_model(tmp_path):
    wheel_dir = tmp_path / "wheel"
    pip = [sys.executable, "-m", "pip", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheel_dir), str(REPO_ROOT)],
                   check=True, cwd=tmp_path)
    (wheel,) = wheel_dir.glob("dinofeat-*.whl")
    assert wheel.stat().st_size < 20 * 2**20
    names = zipfile.ZipFile(wheel).namelist()
    assert f"dinofeat/weights/{BUNDLED_MODEL}/model.safetensors" in names
    assert "dinofeat/training/engine/trainer.py" in names
    assert not any(name.startswith("training/") for name in names)

    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True)
    script = (
        "import dinofeat, sys; "
        f"assert dinofeat.__file__.startswith({str(site)!r}), dinofeat.__file__; "
        f"m = dinofeat.load({BUNDLED_MODEL!r}, device='cpu'); "
        f"print(tuple(m.embed({str(SAMPLE)!r}).shape))"
    )
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hf")}
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True,
                            text=True, check=True)
    assert result.stdout.strip() == "(1, 192)"
