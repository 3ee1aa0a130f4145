"""Networks inside checkpoint files: official full training checkpoints (``teacher`` / ``student``
entries, ``module.`` / ``backbone.`` prefixes, projection heads) and flat state dicts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

StateDict = dict[str, torch.Tensor]

#: Official full-checkpoint entries that hold a network, in the order they are looked for.
CHECKPOINT_KEYS = ("teacher", "student", "model", "state_dict")


_WRAPPER_PREFIXES = ("module.", "backbone.")


def is_full_checkpoint(obj: Mapping[str, Any]) -> bool:
    """Whether ``obj`` is a training checkpoint (networks under named entries), not a flat state dict."""
    return any(isinstance(obj.get(key), Mapping) for key in CHECKPOINT_KEYS)


def backbone_from_checkpoint(obj: Mapping[str, Any], checkpoint_key: str = "teacher") -> StateDict:
    """The backbone state dict of an official DINO checkpoint or flat backbone file.

    The entry ``checkpoint_key`` is taken from a full training checkpoint (the official
    evaluation scripts take the teacher); ``module.`` (DistributedDataParallel) and
    ``backbone.`` (MultiCropWrapper) prefixes are removed and the projection head
    (``head.*``) is dropped. A flat state dict is returned with prefixes removed.

    Args:
        obj: What ``torch.load`` returned.
        checkpoint_key: Which network of a full checkpoint to take.

    Returns:
        The backbone state dict.

    Raises:
        KeyError: ``checkpoint_key`` is not in the checkpoint (the message lists what is).

    Example:
        >>> ckpt = {"teacher": {"backbone.cls_token": torch.zeros(1), "head.mlp.0.weight": torch.zeros(1)}}
        >>> list(backbone_from_checkpoint(ckpt))
        ['cls_token']
    """
    if is_full_checkpoint(obj):
        if not isinstance(obj.get(checkpoint_key), Mapping):
            entries = [key for key in obj if isinstance(obj[key], Mapping)]
            raise KeyError(f"checkpoint has no network entry {checkpoint_key!r}; entries holding dicts: "
                           f"{entries}")
        state = obj[checkpoint_key]
    else:
        state = obj
    out: StateDict = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"checkpoint entry {key!r} is a {type(value).__name__}, not a tensor")
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        if key.startswith("head.") and not key.startswith("head.norm."):
            continue  # the DINO projection head is not part of the backbone (timm's ConvNeXt norm is)
        out[key] = value
    return out
