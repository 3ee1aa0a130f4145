"""Which device to run on, and a clear error when the one asked for is not there."""

from __future__ import annotations

import torch

from dinofeat.utils.errors import SetupError


def auto_device() -> torch.device:
    """cuda if available, else mps, else cpu."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def require_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch.device, if this machine has it.

    Raises:
        SetupError: a CUDA or MPS device is asked for on a machine without one.
        ValueError: ``device`` is not a device name torch knows.
    """
    try:
        target = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"unknown device {device!r}: {error}") from None
    if target.type == "cuda" and not torch.cuda.is_available():
        raise SetupError(f"device {str(device)!r} asks for CUDA but no CUDA device is available")
    if target.type == "mps" and not _mps_available():
        raise SetupError(f"device {str(device)!r} asks for Apple MPS, which this machine or torch lacks")
    return target


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
