"""``dinofeat-train`` as users run it, plus two test hooks set through the environment.

- ``DINOFEAT_TEST_PARK_AFTER_SAVES=N``: after the N-th call of ``Trainer.save_checkpoint`` (every rank
  counts its own calls), write ``<output_dir>/parked.<rank>`` and sleep until killed, so a test can
  SIGKILL the run at a known point.
- ``DINOFEAT_TEST_ITER_SLEEP=S``: sleep S seconds after every iteration, so signals and kills sent at
  random moments land inside the run.

Run as ``python tests/helpers/killable_train.py train ...``, or the same script under torchrun.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from dinofeat.training.cli import main
from dinofeat.training.engine import trainer as trainer_module
from dinofeat.training.engine.dinov2_step import DinoV2Step
from dinofeat.training.engine.step import DinoStep


def _install_hooks() -> None:
    park_after = int(os.environ.get("DINOFEAT_TEST_PARK_AFTER_SAVES", "0"))
    iter_sleep = float(os.environ.get("DINOFEAT_TEST_ITER_SLEEP", "0"))
    if park_after:
        original_save = trainer_module.Trainer.save_checkpoint
        calls = [0]

        def save_then_park(self: Any, *args: Any, **kwargs: Any) -> None:
            original_save(self, *args, **kwargs)
            calls[0] += 1
            if calls[0] == park_after:
                (Path(self.cfg.run.output_dir) / f"parked.{self.dist.rank}").write_text("")
                while True:
                    time.sleep(60)

        trainer_module.Trainer.save_checkpoint = save_then_park  # type: ignore[method-assign]
    for step in (DinoStep, DinoV2Step) if iter_sleep else ():
        step.__call__ = _then_sleep(step.__call__, iter_sleep)  # type: ignore[method-assign]


def _then_sleep(call: Any, seconds: float) -> Any:
    def call_then_sleep(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = call(self, *args, **kwargs)
        time.sleep(seconds)
        return result

    return call_then_sleep


if __name__ == "__main__":
    _install_hooks()
    sys.exit(main())
