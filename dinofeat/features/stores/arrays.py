"""Writing extracted features to disk, atomically, with the list of images they came from.

* ``.npy``: the (N, D) float32 array, plus a sidecar ``<stem>.txt`` with one image path per line;
* ``.safetensors``: tensor ``features`` with metadata ``files`` (a JSON list) and ``model``; features
  of video frames add tensors ``timestamps`` (float64 seconds) and ``frame_indices`` (int64), one per
  row, read back by :func:`load_timestamps`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from dinofeat.utils.atomic_write import replace_atomically
from dinofeat.utils.locking import exclusive

FEATURE_SUFFIXES = (".npy", ".safetensors")


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """The file list written beside a ``.npy`` feature file: ``feats.npy`` -> ``feats.txt``."""
    return Path(path).with_suffix(".txt")


def check_feature_path(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path if it names a feature file this module writes, else ValueError."""
    out = Path(path)
    if out.suffix not in FEATURE_SUFFIXES:
        raise ValueError(f"feature file must end in {' or '.join(FEATURE_SUFFIXES)}, got {out.name!r}")
    return out


def save_features(path: str | os.PathLike[str], features: torch.Tensor, files: Sequence[str],
                  model: str | None = None, timestamps: torch.Tensor | None = None,
                  frame_indices: torch.Tensor | None = None) -> Path:
    """Write (N, D) features and the N source paths; existing files are replaced only once complete.

    Args:
        path: Output ``.npy`` or ``.safetensors`` file.
        features: (N, D) tensor.
        files: The N image paths, in row order.
        model: Model name stored in the safetensors metadata.
        timestamps: For video frames, (N,) presentation times in seconds (``.safetensors`` only).
        frame_indices: For video frames, (N,) frame numbers in their clip (with ``timestamps``).

    Returns:
        The output path.

    Example:
        >>> import tempfile, torch
        >>> out = Path(tempfile.mkdtemp()) / "f.safetensors"
        >>> save_features(out, torch.zeros(2, 4), ["a.png", "b.png"]).name
        'f.safetensors'
    """
    out = check_feature_path(path)
    if features.ndim != 2 or features.shape[0] != len(files):
        raise ValueError(
            f"expected ({len(files)}, D) features for {len(files)} files, got {tuple(features.shape)}")
    extra = _frame_tensors(out, len(files), timestamps, frame_indices)
    out.parent.mkdir(parents=True, exist_ok=True)
    array = features.detach().float().cpu().contiguous()
    if out.suffix == ".npy":
        listing = "".join(f"{name}\n" for name in files).encode()
        # Two files: without the lock, two processes writing one output could leave one's array
        # beside the other's file list.
        with exclusive(out):
            replace_atomically(lambda tmp: np.save(tmp, array.numpy()), out)
            replace_atomically(lambda tmp: tmp.write_bytes(listing), sidecar_path(out))
    else:
        metadata = {"files": json.dumps(list(files)), "model": model or ""}
        replace_atomically(lambda tmp: save_file({"features": array, **extra}, str(tmp),
                                                         metadata=metadata), out)
    return out


def _frame_tensors(out: Path, rows: int, timestamps: torch.Tensor | None,
                   frame_indices: torch.Tensor | None) -> dict[str, torch.Tensor]:
    if timestamps is None:
        if frame_indices is not None:
            raise ValueError("frame_indices are stored with timestamps; got no timestamps")
        return {}
    if out.suffix != ".safetensors":
        raise ValueError(f"frame timestamps are stored in .safetensors feature files, got {out.name!r}")
    extra = {"timestamps": timestamps.detach().double().cpu().contiguous()}
    if frame_indices is not None:
        extra["frame_indices"] = frame_indices.detach().long().cpu().contiguous()
    for name, tensor in extra.items():
        if tensor.shape != (rows,):
            raise ValueError(f"expected ({rows},) {name} for {rows} rows, got {tuple(tensor.shape)}")
    return extra


def load_timestamps(path: str | os.PathLike[str]) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """The (timestamps, frame_indices) of a video's feature file, or None for images' features.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: the file is not a readable feature file.
    """
    file = check_feature_path(path)
    if not file.is_file():
        raise FileNotFoundError(f"feature file not found: {file}")
    if file.suffix == ".npy":
        return None
    try:
        with safe_open(str(file), "pt") as handle:
            names = set(handle.keys())
            if "timestamps" not in names:
                return None
            indices = handle.get_tensor("frame_indices") if "frame_indices" in names else None
            return handle.get_tensor("timestamps"), indices
    except SafetensorError as error:
        raise ValueError(f"{file} is not a readable safetensors feature file: {error}") from None


def load_features(path: str | os.PathLike[str]) -> tuple[torch.Tensor, list[str]]:
    """Read what :func:`save_features` wrote: (features, files).

    Raises:
        FileNotFoundError: the file, or the file list beside a ``.npy``, is missing.
        ValueError: the file is not a readable feature file.
    """
    file = check_feature_path(path)
    if not file.is_file():
        raise FileNotFoundError(f"feature file not found: {file}")
    if file.suffix == ".npy":
        listing = sidecar_path(file)
        if not listing.is_file():
            raise FileNotFoundError(f"{file} has no file list {listing.name} beside it")
        try:
            features = torch.from_numpy(np.load(file))
        except (ValueError, OSError) as error:
            raise ValueError(f"{file} is not a readable .npy feature file: {error}") from None
        files = listing.read_text().splitlines()
        if features.ndim != 2 or features.shape[0] != len(files):
            raise ValueError(f"{file} holds {tuple(features.shape)} features but {listing.name} lists "
                             f"{len(files)} files; write them again with `dinofeat embed`")
        return features, files
    try:
        with safe_open(str(file), "pt") as handle:
            metadata = handle.metadata() or {}
            return handle.get_tensor("features"), json.loads(metadata.get("files", "[]"))
    except SafetensorError as error:
        raise ValueError(f"{file} is not a readable safetensors feature file: {error}") from None
