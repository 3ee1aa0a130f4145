"""DINOv3 Vision Transformers: RoPE on the patch tokens, storage tokens, masked key bias, SwiGLU or MLP,
layer scale, untied norms; the official state-dict keys."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from dinofeat.models.dinov3.config import DinoV3Config
from dinofeat.models.dinov3.convert import (
    dinov3_config_from_transformers,
    to_official,
    transformers_to_official,
)
from dinofeat.models.dinov3.model import DinoV3VisionTransformer
from dinofeat.models.family import ModelFamily, StateDict, blocks_after


def describe(config: DinoV3Config) -> str:
    storage = f", {config.n_storage_tokens} storage" if config.n_storage_tokens else ""
    return f"RoPE ViT /{config.patch_size}, depth {config.depth}, {config.num_heads} heads{storage}"


def from_transformers(config: Mapping[str, Any], state: Mapping[str, torch.Tensor]
                      ) -> tuple[DinoV3Config, StateDict]:
    arch = dinov3_config_from_transformers(config)
    return arch, transformers_to_official(state, arch)


FAMILY = ModelFamily(
    name="dinov3",
    title="DINOv3",
    config_type=DinoV3Config,
    backbone_type=DinoV3VisionTransformer,
    to_backbone_keys=to_official,
    describe=describe,
    input_weight="patch_embed.proj.weight",
    signature_keys=("rope_embed.periods", "storage_tokens"),
    transformers_model_types=("dinov3_vit",),
    from_transformers=from_transformers,
    # Parameters before the first block have layer 0 for layer-wise lr decay.
    layer_of_parameter=blocks_after(("cls_token", "storage_tokens", "mask_token", "patch_embed",
                                     "rope_embed")),
)

__all__ = ["FAMILY", "DinoV3Config", "DinoV3VisionTransformer"]
