"""Every backbone family's record is complete and consistent: what generic code (loading, export, the docs
table, the trainer) relies on when it goes through the family instead of asking which class a model is."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from dinofeat.models import FAMILIES, arch_from_dict, build_backbone, family_of
from dinofeat.models.family import with_training_fields
from tests.helpers.common import TINY_VIT
from tests.helpers.dinov3 import TINY_V3

SMALL: dict[str, dict[str, Any]] = {
    "vit": TINY_VIT,
    "resnet": {"family": "resnet"},
    "dinov3": {**TINY_V3, "patch_size": 8},
    "dinov3_convnext": {"family": "dinov3_convnext", "depths": [1, 1, 1, 1], "dims": [8, 16, 24, 32]},
}


def test_every_family_has_a_small_config_here() -> None:
    assert set(SMALL) == set(FAMILIES)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_a_family_builds_round_trips_and_describes_itself(name: str) -> None:
    family = FAMILIES[name]
    arch = arch_from_dict(dict(SMALL[name]))
    assert isinstance(arch, family.config_type) and arch.family == name
    assert arch_from_dict(arch.to_dict()) == arch
    backbone = build_backbone(arch).eval()
    assert family_of(arch) is family and family_of(backbone) is family
    assert isinstance(family.describe(arch), str) and family.describe(arch)
    assert family.input_weight in backbone.state_dict()
    out = backbone.forward_tokens(torch.randn(1, 3, 64, 64))
    assert out.cls.shape == (1, arch.embed_dim)
    # The converters accept the module's own keys unchanged (a file already in its layout).
    state = backbone.state_dict()
    assert family.to_backbone_keys(state, arch).keys() == state.keys()


@pytest.mark.parametrize("name", [n for n, f in FAMILIES.items() if f.layer_of_parameter is not None])
def test_layer_numbering_covers_every_parameter(name: str) -> None:
    family = FAMILIES[name]
    backbone = build_backbone(arch_from_dict(dict(SMALL[name])))
    depth = backbone.depth
    assert family.layer_of_parameter is not None
    layers = {p: family.layer_of_parameter(p, depth) for p, _ in backbone.named_parameters()}
    assert set(layers.values()) == set(range(depth + 2))
    assert all(layer == int(p.split(".")[1]) + 1 for p, layer in layers.items() if p.startswith("blocks."))
    assert layers[family.input_weight] == 0


def test_training_fields_apply_where_a_family_has_them() -> None:
    vit, resnet = arch_from_dict(dict(TINY_VIT)), arch_from_dict({"family": "resnet"})
    changed = with_training_fields(vit, family_of(vit), drop_path_rate=0.1, in_chans=5)
    assert (changed.drop_path_rate, changed.in_chans) == (0.1, 5)
    assert with_training_fields(resnet, family_of(resnet), drop_path_rate=0.1, in_chans=3) == resnet
    with pytest.raises(ValueError, match="ResNet backbones take RGB images only, not 5 channels"):
        with_training_fields(resnet, family_of(resnet), in_chans=5)
