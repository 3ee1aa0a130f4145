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
    if iter_sleep:
        original_call = DinoStep.__call__

        def call_then_sleep(self: Any, *args: Any, **kwargs: Any) -> Any:
            result = original_call(self, *args, **kwargs)
            time.sleep(iter_sleep)
            return result

        DinoStep.__call__ = call_then_sleep  # type: ignore[method-assign]


if __name__ == "__main__":
    _install_hooks()
    sys.exit(main())
