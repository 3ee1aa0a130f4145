"""Atomic checkpoints, RNG capture/restore, and reading official DINO checkpoints safely."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dinofeat.hub.weight_files import read_pth
from dinofeat.utils.atomic_write import replace_atomically, write_text_atomically

CHECKPOINT_NAME = "checkpoint.pth"


def config_path_for(checkpoint: Path) -> Path:
    """The resolved-config text file written beside a checkpoint."""
    return checkpoint.with_suffix(".config.json")


def atomic_save(obj: Any, path: str | os.PathLike[str], config_text: str | None = None) -> Path:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    An exception or a crash during the write leaves the previous file at ``path`` untouched.
    If ``config_text`` is given it is written (atomically) beside the checkpoint as
    ``<stem>.config.json``.
    """
    target = Path(path)
    if config_text is not None:
        write_text_atomically(config_path_for(target), config_text)

    def write(temporary: Path) -> None:
        with temporary.open("wb") as handle:
            torch.save(obj, handle)

    return replace_atomically(write, target, durable=True)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``.

    Our own checkpoints hold only tensors and plain Python values. Official DINO checkpoints
    also hold an ``argparse.Namespace`` and numpy scalars, which :func:`dinofeat.hub.weight_files.read_pth`
    allow-lists (and nothing else), so they load without ``weights_only=False``.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"checkpoint {file} does not exist")
    data = read_pth(file)
    if not isinstance(data, dict):
        raise ValueError(f"checkpoint {file} does not hold a dict")
    return data


def capture_rng_state() -> dict[str, Any]:
    """Torch (CPU and CUDA), numpy and Python RNG states as tensors and plain values."""
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy_key": torch.from_numpy(np.asarray(np_state["state"]["key"], dtype=np.int64)),
        "numpy_pos": int(np_state["state"]["pos"]),
        "numpy_has_gauss": int(np_state["has_gauss"]),
        "numpy_gauss": float(np_state["gauss"]),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    np.random.set_state({
        "bit_generator": "MT19937",
        "state": {"key": state["numpy_key"].numpy().astype(np.uint32), "pos": state["numpy_pos"]},
        "has_gauss": state["numpy_has_gauss"],
        "gauss": state["numpy_gauss"],
    })
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
