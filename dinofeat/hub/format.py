"""dinofeat's on-disk / on-Hub model format.

A model folder (or Hub repository) holds:

* ``config.json``: ``{"format": "dinofeat", "format_version": 1, "name": ..., "arch": {...},
  "preprocess": {...}, "metadata": {...}}``; ``arch`` is a
  :class:`~dinofeat.models.vit.config.ViTConfig` / :class:`~dinofeat.models.resnet.config.ResNetConfig` /
  :class:`~dinofeat.models.dinov3.config.DinoV3Config` dict;
* ``model.safetensors``: the backbone's state dict with timm / official DINO key names;
* ``README.md``: a model card.

The trainer's export writes this format and :func:`dinofeat.load` reads it, strictly.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from dinofeat.config.preprocess import PreprocessConfig
from dinofeat.models import ArchConfig, arch_from_dict
from dinofeat.utils.atomic_write import replace_atomically, write_text_atomically
from dinofeat.utils.errors import WeightsMismatchError

FORMAT_NAME = "dinofeat"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"


@dataclass
class HubConfig:
    """The parsed ``config.json`` of a dinofeat model folder."""

    arch: ArchConfig
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    name: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "arch": self.arch.to_dict(),
            "preprocess": self.preprocess.to_dict(),
            "metadata": self.metadata,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], origin: str = "config.json") -> HubConfig:
        if data.get("format") != FORMAT_NAME:
            raise ValueError(f"{origin} is not a dinofeat config (format={data.get('format')!r})")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(
                f"{origin} has format_version {version!r}; this dinofeat reads version {FORMAT_VERSION}"
            )
        if not isinstance(data.get("arch"), dict):
            raise ValueError(f"{origin} has no 'arch' object")
        try:
            return cls(
                arch=arch_from_dict(data["arch"]),
                preprocess=PreprocessConfig.from_dict(data.get("preprocess", {})),
                name=data.get("name"),
                metadata=dict(data.get("metadata", {})),
            )
        except (TypeError, ValueError) as error:
            raise ValueError(f"{origin}: {error}") from None


def is_dinofeat_config(data: dict[str, Any]) -> bool:
    return data.get("format") == FORMAT_NAME


def save_pretrained(
    model: nn.Module,
    directory: str | os.PathLike[str],
    config: HubConfig,
    *,
    card: str | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``model`` to ``directory`` in dinofeat's format.

    Each file is written to a temporary name and renamed, so an interrupted save never
    leaves a half-written file under the final name.

    Args:
        model: The backbone (a module built by :func:`dinofeat.models.build_backbone`).
        directory: Target folder, created if needed.
        config: Architecture, preprocessing, name and free-form metadata.
        card: Model card text (``README.md``); a short generated card if None.
        dtype: Store floating-point weights in this dtype (e.g. ``torch.float16``).

    Returns:
        The folder path.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    state = {}
    for key, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu()
        # DINOv3's RoPE periods are data read from the weights, kept at their own precision.
        if dtype is not None and tensor.is_floating_point() and not key.endswith("rope_embed.periods"):
            tensor = tensor.to(dtype)
        state[key] = tensor.contiguous().clone()
    replace_atomically(lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}), out / WEIGHTS_FILE)
    write_text_atomically(out / CONFIG_FILE, json.dumps(config.to_dict(), indent=2) + "\n")
    if card is None:
        card = f"# {config.name or 'dinofeat model'}\n\nA DINO backbone in dinofeat's format.\n"
    write_text_atomically(out / CARD_FILE, card)
    return out


def read_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a ``config.json`` as a dict, with a clear error for a missing or broken file."""
    file = Path(path)
    try:
        data = json.loads(file.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no {file.name} in {file.parent}") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{file} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{file} must hold a JSON object")
    return data


def load_state_dict_strict(model: nn.Module, state_dict: dict[str, torch.Tensor], origin: str) -> None:
    """Load ``state_dict`` into ``model``; any missing, unexpected or mis-shaped key is an error.

    Raises:
        WeightsMismatchError: naming every offending key (up to ten of each kind) and ``origin``.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mis_shaped = sorted(
        f"{key}: file {tuple(state_dict[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in set(expected) & set(state_dict)
        if state_dict[key].shape != expected[key].shape
    )
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                         ("shape mismatches", mis_shaped)):
        if items:
            more = f" (+{len(items) - 10} more)" if len(items) > 10 else ""
            problems.append(f"{label}: {', '.join(items[:10])}{more}")
    if problems:
        raise WeightsMismatchError(
            f"weights from {origin} do not fit the architecture; " + "; ".join(problems))
    model.load_state_dict(state_dict, strict=True)
