"""run.strategy=fsdp (FSDP2) on two gloo CPU processes: one step equals the DDP step within 1e-5, also after
resuming from a sharded checkpoint; the sharded checkpoint exports like any other; for both objectives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dinofeat
from dinofeat.training.cli import main
from dinofeat.training.engine.checkpoint import load_checkpoint
from tests.helpers.common import REPO_ROOT
from tests.helpers.training import make_image_folder

REPO = REPO_ROOT


@pytest.mark.parametrize("objective", ["dino", "dinov2"])
def test_fsdp_step_equals_ddp_step_and_its_sharded_checkpoint_resumes_and_exports(tmp_path: Path,
                                                                                   objective: str) -> None:
    images = make_image_folder(tmp_path / "images", n=8)
    result = tmp_path / "result.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(REPO / "tests" / "helpers" / "fsdp_worker.py"), str(images), str(tmp_path), str(result),
               objective]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    report = json.loads(result.read_text())
    for epoch in ("epoch_1", "epoch_2"):  # epoch_2: both resumed from their checkpoints, then one more step
        differences = report[epoch]
        assert differences["fsdp_step_size"] > 1e-4, differences  # the step did move the weights
        for part in ("student_module", "teacher", "center"):
            assert differences[part] < 1e-5, (epoch, part, differences)

    ckpt = load_checkpoint(tmp_path / "fsdp" / "checkpoint.pth")
    assert ckpt["world_size"] == 2 and "student" not in ckpt
    shard_folders = list((tmp_path / "fsdp" / "checkpoint.shards").iterdir())
    assert [f"checkpoint.shards/{f.name}" for f in shard_folders] == [ckpt["shards"]]  # older ones removed
    for strategy in ("ddp", "fsdp"):
        checkpoint = tmp_path / strategy / "checkpoint.pth"
        assert main(["export", str(checkpoint), str(tmp_path / f"to_{strategy}")]) == 0
    from_ddp, from_fsdp = (dinofeat.load(tmp_path / f"to_{s}", device="cpu") for s in ("ddp", "fsdp"))
    images_in = torch.randn(2, 3, 32, 32)
    assert (from_ddp.embed(images_in) - from_fsdp.embed(images_in)).abs().max().item() < 1e-5
