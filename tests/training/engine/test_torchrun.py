"""torchrun with 2 CPU processes (gloo) x batch b == 1 process x batch 2b, then export + load."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

import dinofeat
from dinofeat.training.cli import main
from dinofeat.training.engine.checkpoint import load_checkpoint
from tests.helpers.common import REPO_ROOT
from tests.helpers.training import make_image_folder, train_args

REPO = REPO_ROOT


def test_two_processes_equal_one_process_double_batch(tmp_path: Path) -> None:
    # SGD: the update is linear in the gradient, so any difference in data order, augmentation,
    # gradient averaging or centre would show; only float summation order differs (observed ~4e-9).
    # (With AdamW the k-part of qkv.bias, whose true gradient is exactly 0 by softmax shift
    # invariance, turns rounding noise into lr-sized steps: observed up to 6e-6.)
    sgd = "optim.optimizer=sgd"
    data = make_image_folder(tmp_path / "images", n=8)
    single, multi = tmp_path / "single", tmp_path / "multi"
    assert main(train_args(data, single, "optim.batch_size_per_gpu=4", sgd)) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "dinofeat.training", *train_args(data, multi, "optim.batch_size_per_gpu=2", sgd)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = load_checkpoint(single / "checkpoint.pth"), load_checkpoint(multi / "checkpoint.pth")
    assert one["iteration"] == two["iteration"] == 4
    for part in ("student", "teacher"):
        worst = max((one[part][k] - two[part][k]).abs().max().item() for k in one[part])
        assert worst < 1e-6, (part, worst)
    assert torch.allclose(one["dino_loss"]["center"], two["dino_loss"]["center"], atol=1e-6, rtol=0)
    assert main(["export", str(multi / "checkpoint.pth"), str(tmp_path / "export")]) == 0
    model = dinofeat.load(tmp_path / "export", device="cpu")
    assert model.embed(torch.randn(1, 3, 32, 32)).shape == (1, 32)
