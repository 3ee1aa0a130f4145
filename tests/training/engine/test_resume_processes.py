"""Resume and preemption as users run them: real ``dinofeat-train`` processes with a data-loading worker and
drop-path, killed with SIGKILL or stopped by SIGTERM / SIGUSR1 and restarted, end with bit-identical weights
to the uninterrupted run; in one process and as two gloo ranks under torchrun."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import pytest

from dinofeat.training.engine.checkpoint import CHECKPOINT_NAME, load_checkpoint
from tests.helpers.processes import (
    assert_same_trajectory,
    finish,
    kill_tree,
    last_log,
    run,
    start,
    wait_until,
)
from tests.helpers.training import make_image_folder

PREEMPT_CODE = 3


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("images") / "images", n=16)


@pytest.fixture(scope="module")
def uninterrupted(images: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[int, str], Path]:
    """The uninterrupted run's output folder, per (number of processes, run.strategy[+objective]); run on
    first use."""

    class Lazy(dict[tuple[int, str], Path]):
        def __missing__(self, key: tuple[int, str]) -> Path:
            nproc, strategy = key
            out = tmp_path_factory.mktemp(f"uninterrupted{nproc}{strategy}") / "run"
            run(images, out, nproc, *settings(strategy))
            self[key] = out
            return out

    return Lazy()


def settings(strategy: str) -> list[str]:
    """``"ddp"``, ``"fsdp"``, or either with ``+dinov2`` (the DINOv2 objective: its iBOT masks' random stream
    must continue across the restarts too)."""
    name, _, objective = strategy.partition("+")
    return [f"run.strategy={name}", *([f"objective.name={objective}"] if objective else [])]


def logged_iterations(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    records = [json.loads(line) for line in lines if line.endswith("}")]  # a line being written is skipped
    return [r["iteration"] for r in records if "iteration" in r]


@pytest.mark.parametrize(("nproc", "strategy"), [
    (1, "ddp"), (2, "ddp"), pytest.param(2, "fsdp", marks=pytest.mark.slow), (1, "ddp+dinov2"),
    pytest.param(2, "ddp+dinov2", marks=pytest.mark.slow),
    pytest.param(2, "fsdp+dinov2", marks=pytest.mark.slow)])
def test_sigkill_then_signal_then_restart_continues_the_trajectory(
    nproc: int, strategy: str, images: Path, uninterrupted: dict[tuple[int, str], Path], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    setting = settings(strategy)
    # 1. SIGKILL right after the first checkpoint (end of epoch 0): every process and worker at once.
    process = start(images, out, nproc, *setting, hooks={"DINOFEAT_TEST_PARK_AFTER_SAVES": "1"})
    wait_until(lambda: (out / "parked.0").exists(), process, "first checkpoint")
    kill_tree(process)
    # 2. A preemption signal in the middle of epoch 1: one process gets SIGTERM to its whole process group
    #    (as a scheduler signals every process of a job, data-loading workers included); under torchrun the
    #    launcher gets SIGUSR1 and forwards it to the ranks. The run writes a mid-epoch checkpoint and exits.
    process = start(images, out, nproc, *setting, f"run.preempt_exit_code={PREEMPT_CODE}",
                    hooks={"DINOFEAT_TEST_ITER_SLEEP": "0.3"})
    wait_until(lambda: 5 in logged_iterations(out), process, "iteration 5 (epoch 1)")
    if nproc == 1:
        os.killpg(process.pid, signal.SIGTERM)
    else:
        process.send_signal(signal.SIGUSR1)
    status = finish(process)
    ckpt = load_checkpoint(out / CHECKPOINT_NAME)
    assert ckpt["epoch"] == 1 and 0 < ckpt["iter_in_epoch"] < 4, (ckpt["epoch"], ckpt["iter_in_epoch"])
    assert max(logged_iterations(out)) == ckpt["iteration"] - 1  # stopped right after the iteration it saved
    if nproc == 1:
        assert status == PREEMPT_CODE, last_log(out)
    # 3. Restarted, it ends where the uninterrupted run ends, bit for bit.
    run(images, out, nproc, *setting)
    assert_same_trajectory(uninterrupted[nproc, strategy], out)


def _soak(nproc: int, kills: int, images: Path, reference: Path, out: Path) -> int:
    """SIGKILL at random moments while it trains, restart each time (checkpoints after every iteration), then
    let it finish; returns how many kills landed before the run was complete."""
    chooser = random.Random(kills * 10 + nproc)
    every = "run.checkpoint_every=1"
    landed = 0
    for _ in range(kills):
        before = len(logged_iterations(out))
        process = start(images, out, nproc, every, hooks={"DINOFEAT_TEST_ITER_SLEEP": "0.15"})
        while len(logged_iterations(out)) == before and process.poll() is None:
            time.sleep(0.02)
        time.sleep(chooser.uniform(0.0, 0.6))
        if process.poll() is not None:
            assert process.returncode == 0, last_log(out)
            break  # complete before the kill
        kill_tree(process)
        landed += 1
        ckpt = load_checkpoint(out / CHECKPOINT_NAME)  # always readable
        # At most the iteration in progress is lost: the checkpoint is at or after the last logged one.
        assert ckpt["iteration"] >= max(logged_iterations(out)), (ckpt["iteration"], logged_iterations(out))
    run(images, out, nproc, every)
    assert_same_trajectory(reference, out)
    return landed


def test_sigkill_at_a_random_moment_loses_at_most_one_iteration(
    images: Path, uninterrupted: dict[tuple[int, str], Path], tmp_path: Path
) -> None:
    assert _soak(1, 1, images, uninterrupted[1, "ddp"], tmp_path / "run") == 1


@pytest.mark.slow
@pytest.mark.parametrize("nproc", [1, 2])
def test_soak_sigkill_at_random_moments(
    nproc: int, images: Path, uninterrupted: dict[tuple[int, str], Path], tmp_path: Path
) -> None:
    landed = _soak(nproc, 8, images, uninterrupted[nproc, "ddp"], tmp_path / "run")
    print(f"{landed} kills landed")
    assert landed >= 3, f"only {landed} kills landed before the run completed"
