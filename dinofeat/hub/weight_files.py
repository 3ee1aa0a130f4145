"""Reading weight files from disk: safetensors, and official ``.pth`` files without unsafe unpickling.

Official DINO training checkpoints pickle an ``argparse.Namespace`` (the run's arguments) and
numpy scalars (learning rates from numpy schedules), which ``torch.load(weights_only=True)``
refuses by default. :func:`read_pth` allows exactly those few types and nothing else, so a
checkpoint never runs arbitrary code while it is read.
"""

from __future__ import annotations

import argparse
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from dinofeat.utils.errors import WeightsMismatchError

try:  # numpy >= 2
    from numpy._core.multiarray import scalar as _np_scalar
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import scalar as _np_scalar  # type: ignore[no-redef]

#: The only non-tensor types a ``.pth`` file may contain: what official DINO checkpoints pickle.
PTH_SAFE_GLOBALS: list[Any] = [
    argparse.Namespace,
    _np_scalar,
    (_np_scalar, "numpy.core.multiarray.scalar"),  # the name numpy 1.x wrote
    np.dtype,
    *(getattr(np.dtypes, name) for name in ("Float64DType", "Float32DType", "Int64DType", "Int32DType",
                                            "BoolDType") if hasattr(np.dtypes, name)),
]

# torch.save writes a zip archive; files from torch < 1.6 are a bare pickle (protocol 2 starts 0x80 0x02).
_TORCH_FILE_STARTS = (b"PK", b"\x80")


def read_pth(path: str | os.PathLike[str]) -> Any:
    """``torch.load(path, weights_only=True)``, allowing only :data:`PTH_SAFE_GLOBALS` beyond tensors.

    Raises:
        WeightsMismatchError: the file is empty, is not a torch file, is truncated or corrupt, or holds
            other pickled objects (named in the message).
    """
    with open(path, "rb") as handle:
        start = handle.read(2)
    if not start:
        raise WeightsMismatchError(f"{path} is empty")
    if not start.startswith(_TORCH_FILE_STARTS):
        raise WeightsMismatchError(f"{path} is not a torch checkpoint (neither a zip archive nor a pickle)")
    try:
        with torch.serialization.safe_globals(PTH_SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise WeightsMismatchError(
            f"{path} contains objects that dinofeat will not unpickle (weights_only=True): "
            f"{str(error).splitlines()[-3:]}"
        ) from None
    except (RuntimeError, EOFError) as error:
        reason = str(error).split(". ")[0] or type(error).__name__
        raise WeightsMismatchError(f"{path} is not a readable torch checkpoint (truncated or corrupt?): "
                                   f"{reason}") from None


def read_safetensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, on the CPU.

    Raises:
        WeightsMismatchError: the file is not a valid safetensors file.
    """
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise WeightsMismatchError(f"{path} is not a readable safetensors file: {error}") from None


def read_weights(path: str | os.PathLike[str]) -> Any:
    """Read a ``.safetensors`` or ``.pth`` / ``.pt`` / ``.bin`` file by its suffix."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"weights file not found: {file}")
    if file.suffix == ".safetensors":
        return read_safetensors(file)
    if file.suffix in (".pth", ".pt", ".bin", ".ckpt"):
        return read_pth(file)
    raise ValueError(f"unknown weights file type {file.suffix!r} for {file}; expected .safetensors or .pth")
