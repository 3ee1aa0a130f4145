"""``dinofeat.load``: one entry point for every way a DINO model can be named."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dinofeat.config import ArchConfig, PreprocessConfig, ResNetConfig, ViTConfig, arch_from_dict
from dinofeat.extractor import FeatureExtractor, auto_device
from dinofeat.hub_format import load_pretrained_dir, load_state_dict_strict
from dinofeat.models import build_backbone
from dinofeat.registry import ZOO, get_spec

Source = str | os.PathLike[str] | ArchConfig | dict[str, Any]


def _as_arch(arch: ArchConfig | dict[str, Any] | str) -> ArchConfig:
    if isinstance(arch, (ViTConfig, ResNetConfig)):
        return arch
    if isinstance(arch, str):
        return get_spec(arch).arch
    return arch_from_dict(dict(arch))


def _finish(backbone: nn.Module, preprocess: PreprocessConfig, name: str | None,
            device: str | torch.device | None, dtype: torch.dtype | None) -> FeatureExtractor:
    target = torch.device(device) if device is not None else auto_device()
    extractor = FeatureExtractor(backbone, preprocess, name=name)
    return extractor.to(device=target, dtype=dtype) if dtype is not None else extractor.to(target)


def load(
    source: Source,
    *,
    arch: ArchConfig | dict[str, Any] | str | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    pretrained: bool = True,
) -> FeatureExtractor:
    """Load a DINO model as a :class:`~dinofeat.extractor.FeatureExtractor`.

    Args:
        source: A zoo name (``"vit_s8"``, see :func:`dinofeat.list_models`); a local folder in
            dinofeat's Hub format; an architecture (:class:`~dinofeat.config.ViTConfig` or a
            dict of its fields) for a randomly initialised model.
        arch: Architecture of a bare weights file.
        device: Defaults to cuda, then mps, then cpu.
        dtype: E.g. ``torch.bfloat16`` on a GPU; float32 by default.
        pretrained: With a zoo name, ``False`` builds the architecture without downloading weights.

    Example:
        >>> import dinofeat
        >>> model = dinofeat.load("vit_s16", pretrained=False, device="cpu")
        >>> model.embed_dim
        384
    """
    if isinstance(source, (ViTConfig, ResNetConfig, dict)):
        if pretrained and arch is not None:
            raise ValueError("pass weights as `source` and the architecture as `arch`, not both as architectures")
        config = _as_arch(source)
        return _finish(build_backbone(config), PreprocessConfig(), None, device, dtype)
    text = os.fspath(source)
    if text in ZOO:
        spec = ZOO[text]
        backbone = build_backbone(spec.arch)
        if pretrained:
            raise NotImplementedError("downloading zoo weights is not implemented yet")
        return _finish(backbone, spec.preprocess, spec.name, device, dtype)
    path = Path(text)
    if path.is_dir():
        hub_config, state = load_pretrained_dir(path)
        backbone = build_backbone(hub_config.arch)
        load_state_dict_strict(backbone, state, str(path))
        return _finish(backbone, hub_config.preprocess, hub_config.name or path.name, device, dtype)
    get_spec(text)  # raises KeyError with close matches for anything else
    raise AssertionError("unreachable")
