"""Resume as users run it: real ``dinofeat-train`` processes with data-loading workers and drop-path,
killed with SIGKILL and restarted, end with bit-identical weights to the uninterrupted run; one process
and two gloo ranks under torchrun."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.training.helpers import make_image_folder
from tests.training.processes import assert_same_trajectory, kill_tree, run, start, wait_until


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("images") / "images", n=16)


@pytest.fixture(scope="module")
def uninterrupted(images: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """The uninterrupted run's output folder, per number of processes (run once, on first use)."""

    class Lazy(dict[int, Path]):
        def __missing__(self, nproc: int) -> Path:
            out = tmp_path_factory.mktemp(f"uninterrupted{nproc}") / "run"
            run(images, out, nproc)
            self[nproc] = out
            return out

    return Lazy()


@pytest.mark.parametrize("nproc", [1, 2])
def test_sigkill_after_epoch_checkpoint_then_restart(
    nproc: int, images: Path, uninterrupted: dict[int, Path], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    # Killed right after its first checkpoint (end of epoch 0), all of its processes and workers at once.
    process = start(images, out, nproc, hooks={"DINOFEAT_TEST_PARK_AFTER_SAVES": "1"})
    wait_until(lambda: (out / "parked.0").exists(), process, "first checkpoint")
    kill_tree(process)
    run(images, out, nproc)
    assert_same_trajectory(uninterrupted[nproc], out)
