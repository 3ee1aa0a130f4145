"""DINO's ResNet-50: timm's ResNet trunk, global-average-pooled, its last feature map as patch tokens."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from dinofeat.models.family import ModelFamily, StateDict
from dinofeat.models.resnet.config import ResNetConfig
from dinofeat.models.resnet.convert import resnet_official_to_timm
from dinofeat.models.resnet.graph import resnet_export_module
from dinofeat.models.resnet.model import DinoResNet


def describe(config: ResNetConfig) -> str:
    return f"ResNet-{config.depth}"


def to_backbone_keys(state: Mapping[str, torch.Tensor], config: Any) -> StateDict:
    return resnet_official_to_timm(state)


FAMILY = ModelFamily(
    name="resnet",
    title="ResNet",
    config_type=ResNetConfig,
    backbone_type=DinoResNet,
    to_backbone_keys=to_backbone_keys,
    describe=describe,
    input_weight="conv1.weight",
    signature_keys=("layer4.0.conv1.weight",),
    export_module=resnet_export_module,
)

__all__ = ["FAMILY", "DinoResNet", "ResNetConfig"]
