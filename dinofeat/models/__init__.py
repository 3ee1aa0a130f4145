"""Backbone families, one folder each, all answering the token interface (``forward_tokens`` ->
``TokenOutput``).

:data:`FAMILIES` is the one table of families; everything generic (building from a config, reading
configs back from JSON, loading weights, ONNX export, the docs table, the trainer) goes through it.
"""

from __future__ import annotations

from typing import Any, TypeAlias

from dinofeat.config.preprocess import check_keys
from dinofeat.models import dinov3, dinov3_convnext, resnet, vit
from dinofeat.models.dinov3 import DinoV3Config, DinoV3VisionTransformer
from dinofeat.models.dinov3_convnext import DinoV3ConvNeXt, DinoV3ConvNeXtConfig
from dinofeat.models.family import ModelFamily
from dinofeat.models.resnet import DinoResNet, ResNetConfig
from dinofeat.models.tokens import TokenBackbone, TokenOutput
from dinofeat.models.vit import DinoVisionTransformer, ViTConfig

__all__ = ["FAMILIES", "ArchConfig", "Backbone", "DinoResNet", "DinoV3Config", "DinoV3ConvNeXt",
           "DinoV3ConvNeXtConfig", "DinoV3VisionTransformer", "DinoVisionTransformer", "ModelFamily",
           "ResNetConfig", "TokenBackbone", "TokenOutput", "ViTConfig", "arch_from_dict", "build_backbone",
           "family_of"]

#: ``family`` name -> its record: the one table a new backbone family is added to.
FAMILIES: dict[str, ModelFamily] = {
    family.name: family for family in (vit.FAMILY, resnet.FAMILY, dinov3.FAMILY, dinov3_convnext.FAMILY)
}

#: An architecture config of any family.
ArchConfig: TypeAlias = ViTConfig | ResNetConfig | DinoV3Config | DinoV3ConvNeXtConfig
#: What :func:`build_backbone` returns.
Backbone: TypeAlias = DinoVisionTransformer | DinoResNet | DinoV3VisionTransformer | DinoV3ConvNeXt


def family_of(item: Any) -> ModelFamily:
    """The family of an architecture config or of a backbone module.

    Raises:
        TypeError: ``item`` belongs to no family of :data:`FAMILIES`.
    """
    for family in FAMILIES.values():
        if isinstance(item, (family.config_type, family.backbone_type)):
            return family
    raise TypeError(f"{type(item).__name__} belongs to no backbone family; known families: "
                    f"{', '.join(FAMILIES)}")


def build_backbone(arch: ArchConfig) -> Backbone:
    """Build an untrained backbone (random initialisation) for ``arch``.

    The trainer builds its student and teacher here, and :func:`dinofeat.load` builds the
    module it then fills with weights, so both halves share one definition.
    """
    backbone: Backbone = family_of(arch).build(arch)  # type: ignore[assignment]
    return backbone


def arch_from_dict(data: dict[str, Any]) -> ArchConfig:
    """Build an architecture config from its ``to_dict()`` form.

    A dict without ``family`` is taken as ViT hyper-parameters, so that
    ``{"patch_size": 16, "embed_dim": 384, "depth": 12, "num_heads": 6}`` is enough.

    Raises:
        ValueError: an unknown family, unknown keys or missing required keys (named).
    """
    name = data.get("family", "vit")
    family = FAMILIES.get(name)
    if family is None:
        raise ValueError(f"unknown architecture family {name!r}; expected one of {sorted(FAMILIES)}")
    check_keys(family.config_type, data, "architecture")
    config: ArchConfig = family.config_type(**data)
    return config
