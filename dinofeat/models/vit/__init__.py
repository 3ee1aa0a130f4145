"""DINO and DINOv2 Vision Transformers: timm's ViT with the official position-embedding rule, registers,
layer scale and SwiGLU."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from dinofeat.models.family import ModelFamily, StateDict, blocks_after
from dinofeat.models.vit.config import ViTConfig
from dinofeat.models.vit.convert import (
    dinov2_official_to_timm,
    transformers_to_timm,
    vit_config_from_transformers,
)
from dinofeat.models.vit.graph import vit_export_module
from dinofeat.models.vit.model import DinoVisionTransformer


def describe(config: ViTConfig) -> str:
    registers = f", {config.num_register_tokens} reg" if config.num_register_tokens else ""
    return f"ViT /{config.patch_size}, depth {config.depth}, {config.num_heads} heads{registers}"


def from_transformers(config: Mapping[str, Any], state: Mapping[str, torch.Tensor]
                      ) -> tuple[ViTConfig, StateDict]:
    arch = vit_config_from_transformers(config, state)
    return arch, transformers_to_timm(state, arch)


FAMILY = ModelFamily(
    name="vit",
    title="DINO / DINOv2 ViT",
    config_type=ViTConfig,
    backbone_type=DinoVisionTransformer,
    to_backbone_keys=dinov2_official_to_timm,
    describe=describe,
    input_weight="patch_embed.proj.weight",
    signature_keys=("pos_embed",),
    transformers_model_types=("vit", "dinov2", "dinov2_with_registers"),
    from_transformers=from_transformers,
    export_module=vit_export_module,
    # Parameters before the first block have layer 0 for layer-wise lr decay.
    layer_of_parameter=blocks_after(("cls_token", "pos_embed", "reg_token", "patch_embed", "mask_token")),
)

__all__ = ["FAMILY", "DinoVisionTransformer", "ViTConfig"]
