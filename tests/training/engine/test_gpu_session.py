"""The prepared GPU-machine command (bench/gpu_session.py), rehearsed on the CPU with tiny sizes: a GPU
session has one try, so every stage must run and the candidate model must come back loadable."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import dinofeat
from dinofeat.models import build_backbone
from dinofeat.training.config.train_config import eval_preprocess, resolve_config, training_arch
from tests.helpers.common import REPO_ROOT

SCRIPT = REPO_ROOT / "bench" / "gpu_session.py"


def test_the_gpu_candidate_fits_the_bundled_weights_budget():
    # test_bundled_model holds the shipped weights under 12 MiB; the candidate would replace them.
    cfg = resolve_config(preset="imagenette_gpu")
    backbone = build_backbone(training_arch(cfg))
    assert sum(p.numel() for p in backbone.parameters()) * 2 < 12 * 2**20  # fp16 export (--half)
    assert (eval_preprocess(cfg).resize, eval_preprocess(cfg).crop) == (128, 112)  # the carried images' size


@pytest.mark.slow
def test_rehearsal_runs_every_stage_and_returns_a_loadable_model(tmp_path):
    rng = np.random.default_rng(0)
    for index in range(48):
        folder = tmp_path / "data" / f"class{index % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / f"{index}.jpg")
    out = tmp_path / "out"
    subprocess.run([sys.executable, str(SCRIPT), "--data", str(tmp_path / "data"), "--out", str(out),
                    "--rehearse", "--budget-s", "150"], check=True, timeout=400)
    results = json.loads((out / "results.json").read_text())
    assert not [key for key in results if key.endswith("_failed")], results
    assert set(results["embed_tiny"]) == {"float32", "bfloat16"}
    assert set(results["train_step_tiny"]) == {"pil_workers", "device_augmentation", "step_alone"}
    assert results["candidate_plan"]["augmentation"] in {"cpu", "device"}
    training = results["candidate_training"]
    assert training["epochs_done"] >= 1 and len(training["loss_per_epoch"]) == training["epochs_done"]
    model = dinofeat.load(out / "model", device="cpu")
    assert model.embed(np.zeros((32, 32, 3), np.uint8), progress=False).shape == (1, 48)
