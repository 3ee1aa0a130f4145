"""Backbone builders: one :class:`~dinofeat.config.ArchConfig` in, one ``nn.Module`` out.

Each family lives in its own module and answers the token interface of
:mod:`dinofeat.models.tokens`; :data:`BUILDERS` maps a config class to its module's class.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dinofeat.config import ArchConfig, DinoV3Config, DinoV3ConvNeXtConfig, ResNetConfig, ViTConfig
from dinofeat.models.dinov3_convnext import DinoV3ConvNeXt
from dinofeat.models.dinov3_vit import DinoV3VisionTransformer
from dinofeat.models.resnet import DinoResNet
from dinofeat.models.tokens import TokenBackbone, TokenOutput
from dinofeat.models.vit import DinoVisionTransformer

__all__ = ["BUILDERS", "Backbone", "DinoResNet", "DinoV3ConvNeXt", "DinoV3VisionTransformer",
           "DinoVisionTransformer", "TokenBackbone", "TokenOutput", "build_backbone"]

#: What :func:`build_backbone` returns.
Backbone = DinoVisionTransformer | DinoResNet | DinoV3VisionTransformer | DinoV3ConvNeXt

#: Config class -> backbone class: the one place a new family is plugged in.
BUILDERS: dict[type, Callable[[Any], Backbone]] = {
    ViTConfig: DinoVisionTransformer,
    ResNetConfig: DinoResNet,
    DinoV3Config: DinoV3VisionTransformer,
    DinoV3ConvNeXtConfig: DinoV3ConvNeXt,
}


def build_backbone(arch: ArchConfig) -> Backbone:
    """Build an untrained backbone (random initialisation) for ``arch``.

    The trainer builds its student and teacher here, and :func:`dinofeat.load` builds the
    module it then fills with weights, so both halves share one definition.
    """
    builder = BUILDERS.get(type(arch))
    if builder is None:
        raise TypeError(f"unsupported architecture config {type(arch).__name__}")
    return builder(arch)
