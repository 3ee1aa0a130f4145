"""Backbone builders: one :class:`~dinofeat.config.ArchConfig` in, one ``nn.Module`` out."""

from __future__ import annotations

from dinofeat.config import ArchConfig, ResNetConfig, ViTConfig
from dinofeat.models.resnet import DinoResNet
from dinofeat.models.vit import DinoVisionTransformer, TokenOutput

__all__ = ["Backbone", "DinoResNet", "DinoVisionTransformer", "TokenOutput", "build_backbone"]

#: What :func:`build_backbone` returns.
Backbone = DinoVisionTransformer | DinoResNet


def build_backbone(arch: ArchConfig) -> Backbone:
    """Build an untrained backbone (random initialisation) for ``arch``.

    The trainer builds its student and teacher here, and :func:`dinofeat.load` builds the
    module it then fills with weights, so both halves share one definition.
    """
    if isinstance(arch, ViTConfig):
        return DinoVisionTransformer(arch)
    if isinstance(arch, ResNetConfig):
        return DinoResNet(arch)
    raise TypeError(f"unsupported architecture config {type(arch).__name__}")
