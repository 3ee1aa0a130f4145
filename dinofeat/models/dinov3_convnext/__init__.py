"""DINOv3 ConvNeXts (distilled from the ViT-7B), in the official state-dict layout."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from dinofeat.models.dinov3_convnext.config import DinoV3ConvNeXtConfig
from dinofeat.models.dinov3_convnext.convert import config_from_transformers, to_official
from dinofeat.models.dinov3_convnext.model import DinoV3ConvNeXt
from dinofeat.models.family import ModelFamily, StateDict


def describe(config: DinoV3ConvNeXtConfig) -> str:
    return f"ConvNeXt, depths {'-'.join(map(str, config.depths))}"


def to_backbone_keys(state: Mapping[str, torch.Tensor], config: Any) -> StateDict:
    return to_official(state)


def from_transformers(config: Mapping[str, Any], state: Mapping[str, torch.Tensor]
                      ) -> tuple[DinoV3ConvNeXtConfig, StateDict]:
    return config_from_transformers(config), to_official(state)


FAMILY = ModelFamily(
    name="dinov3_convnext",
    title="DINOv3 ConvNeXt",
    config_type=DinoV3ConvNeXtConfig,
    backbone_type=DinoV3ConvNeXt,
    to_backbone_keys=to_backbone_keys,
    describe=describe,
    input_weight="downsample_layers.0.0.weight",
    signature_keys=("downsample_layers.0.0.weight", "stages.0.0.dwconv.weight"),
    transformers_model_types=("dinov3_convnext",),
    from_transformers=from_transformers,
)

__all__ = ["FAMILY", "DinoV3ConvNeXt", "DinoV3ConvNeXtConfig"]
