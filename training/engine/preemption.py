"""Preemption and mid-epoch checkpoints: when to write a checkpoint inside an epoch, and stopping cleanly
on SIGTERM / SIGUSR1.

Clusters preempt jobs with SIGTERM, and SLURM can send SIGUSR1 some time before the time limit
(``--signal``). While :class:`RunControl` is active, those signals only set a flag; the trainer asks it after
every iteration whether to write a mid-epoch checkpoint (every ``run.checkpoint_every`` iterations, every
``run.checkpoint_every_minutes`` minutes, or because a signal came) and whether to stop. Under torchrun all
ranks agree (one small all-reduce per iteration): a signal seen by any rank stops every rank after the same
iteration.
"""

from __future__ import annotations

import signal
import threading
import time
from types import FrameType, TracebackType
from typing import Any

import torch
import torch.distributed as dist

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def ignore_preemption_signals(worker_id: int) -> None:
    """``DataLoader(worker_init_fn=...)``: data-loading workers ignore SIGTERM / SIGUSR1.

    A scheduler signals every process of the job, workers included; a worker that died of it would make
    the loader raise before the main process could write its checkpoint. The main process stops the
    workers itself when it exits.
    """
    for signum in PREEMPTION_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


class RunControl:
    """Decides, after every iteration, whether to checkpoint and whether to stop.

    Use as a context manager around the training loop: inside it, SIGTERM and SIGUSR1 are recorded instead
    of ending the process (only in the main thread; elsewhere signals keep their handlers).

    Args:
        every_iters: Checkpoint after every iteration whose global number (1-based) is a multiple of
            this; 0: never.
        every_minutes: Checkpoint when this many minutes have passed since the last checkpoint (or the
            start); 0: never.
        device: Device of the process group's collectives (CUDA for NCCL, CPU for gloo).
    """

    def __init__(self, every_iters: int, every_minutes: float, device: torch.device) -> None:
        self.every_iters = every_iters
        self.every_seconds = every_minutes * 60.0
        self.device = device
        self.stop_reason: str | None = None  # set once all ranks agreed to stop
        self._received: str | None = None
        self._previous: dict[int, Any] = {}
        self._last_checkpoint = time.monotonic()

    def __enter__(self) -> RunControl:
        self._last_checkpoint = time.monotonic()
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._record) for signum in PREEMPTION_SIGNALS}
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self._received = self._received or signal.Signals(signum).name

    def checkpoint_written(self) -> None:
        """Restart the minutes clock."""
        self._last_checkpoint = time.monotonic()

    def after_iteration(self, iterations_done: int) -> tuple[bool, bool]:
        """``(checkpoint now, stop now)`` after global iteration ``iterations_done`` (1-based), the same
        answer on every rank."""
        elapsed = time.monotonic() - self._last_checkpoint
        save = bool(self.every_iters) and iterations_done % self.every_iters == 0
        save = save or 0 < self.every_seconds <= elapsed
        stop = self._received is not None
        if dist.is_available() and dist.is_initialized():
            flags = torch.tensor([float(save), float(stop)], device=self.device)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            save, stop = bool(flags[0].item()), bool(flags[1].item())
        if stop:
            self.stop_reason = self._received or "a signal to another rank"
        return save or stop, stop
