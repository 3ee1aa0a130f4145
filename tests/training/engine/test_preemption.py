"""Mid-epoch checkpoints and stopping on SIGTERM / SIGUSR1, in one process (the real-process versions are in
test_resume_processes.py)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

from dinofeat.training.config.train_config import resolve_config
from dinofeat.training.engine import preemption
from dinofeat.training.engine.checkpoint import CHECKPOINT_NAME, load_checkpoint
from dinofeat.training.engine.preemption import RunControl
from dinofeat.training.engine.step import DinoStep
from dinofeat.training.engine.trainer import Trainer
from tests.helpers.training import TINY_TRAIN_OVERRIDES, make_image_folder

CPU = torch.device("cpu")


def test_a_signal_stops_after_the_iteration_and_the_handlers_come_back() -> None:
    before = signal.getsignal(signal.SIGUSR1)
    with RunControl(0, 0, CPU) as control:
        assert control.after_iteration(1) == (False, False)
        os.kill(os.getpid(), signal.SIGUSR1)
        assert control.after_iteration(2) == (True, True)
    assert control.stop_reason == "SIGUSR1"
    assert signal.getsignal(signal.SIGUSR1) is before


def test_checkpoints_every_n_iterations_and_every_m_minutes(monkeypatch: pytest.MonkeyPatch) -> None:
    control = RunControl(3, 0, CPU)
    saves = [control.after_iteration(i)[0] for i in range(1, 8)]
    assert saves == [False, False, True, False, False, True, False]
    clock = [1000.0]
    monkeypatch.setattr(preemption.time, "monotonic", lambda: clock[0])
    timed = RunControl(0, 2.0, CPU)
    with timed:
        clock[0] += 119
        assert timed.after_iteration(1) == (False, False)
        clock[0] += 1
        assert timed.after_iteration(2) == (True, False)
        timed.checkpoint_written()
        assert timed.after_iteration(3) == (False, False)


def _config(data: Path, out: Path, *extra: str):  # type: ignore[no-untyped-def]
    two_blocks = 'model.arch={"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 32}'
    return resolve_config(overrides=[*TINY_TRAIN_OVERRIDES, two_blocks, "model.drop_path_rate=0.1",
                                     f"data.path={data}", f"run.output_dir={out}", *extra])


def _trajectory(trainer: Trainer) -> dict[str, torch.Tensor]:
    state = {f"s.{k}": v for k, v in trainer.student_module.state_dict().items()}
    state.update({f"t.{k}": v for k, v in trainer.teacher.state_dict().items()})
    state["center"] = trainer.step.loss_fn.center
    return state


def test_stopped_mid_epoch_and_resumed_equals_uninterrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make_image_folder(tmp_path / "images")  # 2 iterations per epoch, 2 epochs
    full = Trainer(_config(data, tmp_path / "full"))
    full.fit()
    stopped = Trainer(_config(data, tmp_path / "part"))
    original_step = DinoStep.__call__

    def step_then_signal(self: DinoStep, crops: list[torch.Tensor], it: int, epoch: int) -> dict[str, Any]:
        result = original_step(self, crops, it, epoch)
        if it == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives during iteration 2 (epoch 1, index 0)
        return result

    monkeypatch.setattr(DinoStep, "__call__", step_then_signal)
    summary = stopped.fit()
    monkeypatch.undo()
    assert summary["stopped_by"] == "SIGTERM" and not summary["complete"]
    ckpt = load_checkpoint(tmp_path / "part" / CHECKPOINT_NAME)
    assert (ckpt["epoch"], ckpt["iter_in_epoch"], ckpt["iteration"]) == (1, 1, 3)
    torch.manual_seed(1234)  # a restart does not keep the global RNG state
    resumed = Trainer(_config(data, tmp_path / "part"))
    assert (resumed.start_epoch, resumed.start_iter) == (1, 1)
    assert "stopped_by" not in resumed.fit()
    expected, got = _trajectory(full), _trajectory(resumed)
    assert [k for k in expected if not torch.equal(expected[k], got[k])] == []


def test_resume_mid_epoch_with_shorter_epochs_is_refused(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "images", n=16)
    trainer = Trainer(_config(data, tmp_path / "run", "run.epochs=1"))
    trainer.save_checkpoint(0, 3)
    with pytest.raises(ValueError, match=r"stopped at iteration 3 of epoch 0, but epochs now have 2 iter"):
        Trainer(_config(data, tmp_path / "run", "run.epochs=1", "run.max_iters_per_epoch=2"))


def test_preemption_settings_are_checked() -> None:
    with pytest.raises(ValueError, match=r"run.preempt_exit_code must lie in \[0, 255\], got 300.*"):
        resolve_config(overrides=["run.epochs=10", "run.preempt_exit_code=300"])
    with pytest.raises(ValueError, match=r"run.checkpoint_every must be >= 0, got -1"):
        resolve_config(overrides=["run.epochs=10", "run.checkpoint_every=-1"])
