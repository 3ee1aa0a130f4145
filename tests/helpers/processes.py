"""Run ``dinofeat-train`` as real processes (one, or two gloo ranks under torchrun), kill them, compare."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dinofeat.training.engine.checkpoint import CHECKPOINT_NAME, load_checkpoint
from tests.helpers.common import REPO_ROOT
from tests.helpers.training import train_args

REPO = REPO_ROOT
KILLABLE = REPO / "tests" / "helpers" / "killable_train.py"
# drop-path > 0 (two blocks: drop-path rates rise linearly from 0 at the first block) and data-loading
# workers > 0: the two ingredients of a resume bug found earlier, kept in the settings as its regression test.
RESUME_SETTINGS = (
    'model.arch={"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 32}',
    "model.drop_path_rate=0.1", "data.num_workers=1", "run.epochs=3",
)


def batch_setting(nproc: int) -> str:
    """Per-process batch such that one and two processes see the same global batch of 4."""
    return f"optim.batch_size_per_gpu={4 // nproc}"


def command(args: list[str], nproc: int, hooks: bool) -> list[str]:
    """``python -m dinofeat.training ARGS`` (or the hooked script), under torchrun when ``nproc > 1``."""
    target = [str(KILLABLE)] if hooks else ["-m", "dinofeat.training"]
    if nproc == 1:
        return [sys.executable, *target, *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            "--signals-to-handle", "SIGTERM,SIGINT,SIGUSR1", *target, *args]


def start(data: Path, out: Path, nproc: int, *extra: str, hooks: dict[str, str] | None = None,
          log: Path | None = None) -> subprocess.Popen[bytes]:
    """Start a tiny training run in its own session; its output goes to ``log`` (default out/../NAME.log)."""
    args = train_args(data, out, *RESUME_SETTINGS, batch_setting(nproc), *extra)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **(hooks or {})}
    log = log or out.parent / f"{out.name}.{time.monotonic_ns()}.log"
    with log.open("wb") as handle:
        return subprocess.Popen(command(args, nproc, hooks is not None), env=env, cwd=REPO, stdout=handle,
                                stderr=subprocess.STDOUT, start_new_session=True)


def finish(process: subprocess.Popen[bytes], timeout: float = 120) -> int:
    """Wait for a run; on a timeout kill its whole process tree and fail."""
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(process)
        raise AssertionError(f"run {process.args} did not finish in {timeout} s") from None


def run(data: Path, out: Path, nproc: int, *extra: str, **kwargs: Any) -> None:
    """A run that must finish with status 0."""
    process = start(data, out, nproc, *extra, **kwargs)
    status = finish(process)
    assert status == 0, f"status {status}; log:\n{last_log(out)}"


def last_log(out: Path) -> str:
    logs = sorted(out.parent.glob(f"{out.name}.*.log"), key=lambda p: p.stat().st_mtime)
    return logs[-1].read_text(errors="replace")[-4000:] if logs else "(no log)"


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # exited meanwhile
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def kill_tree(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process and every descendant (torchrun's ranks run in sessions of their own), like a
    scheduler killing a job; then reap it."""
    pids = _descendants(process.pid)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait(timeout=30)
    deadline = time.monotonic() + 30  # the others are reaped by init, not by us: wait until they are gone
    while any(_alive(pid) for pid in pids[1:]) and time.monotonic() < deadline:
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_until(condition: Callable[[], bool], process: subprocess.Popen[bytes], what: str,
               timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the run ended (status {process.returncode}) before {what}")
        if time.monotonic() > deadline:
            kill_tree(process)
            raise AssertionError(f"no {what} within {timeout} s")
        time.sleep(0.02)


def _weights_and_optimizer(ckpt: dict[str, Any], prefix: str = "") -> dict[str, torch.Tensor]:
    state = {f"{prefix}{part}.{k}": v for part in ("student", "teacher") for k, v in ckpt[part].items()}
    for index, slots in ckpt["optimizer"]["state"].items():
        tensors = {k: v for k, v in slots.items() if isinstance(v, torch.Tensor)}
        state.update({f"{prefix}optimizer.{index}.{k}": v for k, v in tensors.items()})
    return state


def trajectory_state(out: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the final checkpoint that the trajectory determines: weights, centre, optimiser (for a
    sharded checkpoint: every rank's shards)."""
    ckpt = load_checkpoint(out / CHECKPOINT_NAME)
    if "shards" in ckpt:
        state = {}
        for file in sorted((out / ckpt["shards"]).glob("rank*.pth")):
            shards = load_checkpoint(file)
            plain = {part: shards[part]["tensors"] for part in ("student", "teacher")}
            state.update(_weights_and_optimizer({**plain, "optimizer": shards["optimizer"]}, f"{file.stem}."))
    else:
        state = _weights_and_optimizer(ckpt)
    state.update({f"loss.{k}": v for k, v in ckpt["dino_loss"].items()})  # the centre(s)
    state["iteration"] = torch.tensor(ckpt["iteration"])
    return state


def assert_same_trajectory(expected_out: Path, got_out: Path) -> None:
    expected, got = trajectory_state(expected_out), trajectory_state(got_out)
    assert expected.keys() == got.keys()
    differ = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert not differ, f"{len(differ)} of {len(expected)} tensors differ, e.g. {differ[:5]}"
