"""Overlapping patches (patch-embedding stride s < P) for the DINO / DINOv2 ViTs."""

from __future__ import annotations

import pytest
import torch

import dinofeat
from dinofeat.models import arch_from_dict, build_backbone
from dinofeat.models.resnet.config import ResNetConfig
from dinofeat.models.vit.config import ViTConfig
from dinofeat.models.vit.pos_embed import interpolate_pos_embed, strided_pos_embed
from tests.helpers.common import TINY_VIT

V1 = dict(patch_size=8, embed_dim=32, depth=2, num_heads=2, img_size=32)
V2 = dict(V1, layer_scale_init=1e-5, mlp="swiglu")
V2_REG = dict(V1, layer_scale_init=1e-5, num_register_tokens=4, pos_embed_has_cls=False,
              interpolate_offset=0.0, interpolate_antialias=True)
FAMILIES = {"v1": V1, "v2": V2, "v2_reg": V2_REG}


def _vit(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    vit = build_backbone(ViTConfig(**FAMILIES[kind])).eval()
    with torch.no_grad():  # a learned-looking table, not timm's near-zero initialisation
        vit.pos_embed.normal_()
    return vit


V3 = dict(family="dinov3", patch_size=8, embed_dim=32, depth=2, num_heads=2, n_storage_tokens=4,
          layerscale_init=1e-5, mask_k_bias=True)


def _v3() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_backbone(arch_from_dict(V3)).eval()


@pytest.mark.parametrize("kind", [*FAMILIES, "v3"])
@pytest.mark.parametrize("hw", [(32, 32), (40, 56), (44, 35)])
def test_stride_equal_to_patch_is_the_ordinary_forward_bit_for_bit(kind, hw):
    vit = _v3() if kind == "v3" else _vit(kind)
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        plain = vit.forward_tokens(x, cls_attention=True, blocks=[0])
        strided = vit.forward_tokens(x, cls_attention=True, blocks=[0], patch_stride=8)
    assert strided.grid == plain.grid
    assert torch.equal(strided.tokens, plain.tokens)
    assert torch.equal(strided.cls_attention, plain.cls_attention)
    assert torch.equal(strided.intermediates[0], plain.intermediates[0])


@pytest.mark.parametrize("kind", ["v1", "v3"])
def test_image_smaller_than_one_patch_is_refused_naming_its_size(kind):
    vit = _v3() if kind == "v3" else _vit(kind)
    with pytest.raises(ValueError, match="image of 7x32 px is smaller than one 8x8 patch"):
        vit.forward_tokens(torch.randn(1, 3, 7, 32))


@pytest.mark.parametrize("kind", FAMILIES)
@pytest.mark.parametrize(("stride", "grid"), [(4, (9, 11)), (2, (17, 21)), (1, (33, 41))])
def test_grid_is_h_minus_p_over_s_plus_one(kind, stride, grid):
    out = _vit(kind).forward_tokens(torch.randn(1, 3, 40, 48), cls_attention=True, patch_stride=stride)
    assert out.grid == grid
    assert out.patches.shape == (1, grid[0] * grid[1], 32)
    assert out.cls_attention.shape[-1] == out.num_prefix + grid[0] * grid[1]


@pytest.mark.parametrize(("offset", "antialias", "stored", "patch", "hw"), [
    (0.1, False, 14, 16, (240, 320)),  # DINO
    (0.1, False, 16, 14, (224, 336)),  # DINOv2 (table resampled up and down)
    (0.0, True, 37, 14, (224, 336)),   # DINOv2 with registers: antialiased, downsampling
    (0.0, True, 37, 14, (518, 700)),   # ... and upsampling
])
def test_centre_rule_at_stride_p_is_the_ordinary_resampling(offset, antialias, stored, patch, hw):
    table = torch.randn(1, 1 + stored * stored, 16)
    grid = (hw[0] // patch, hw[1] // patch)
    ordinary = interpolate_pos_embed(table, image_hw=hw, grid_hw=grid, num_prefix=1, offset=offset,
                                     antialias=antialias)
    centres = strided_pos_embed(table, image_hw=hw, patch_size=patch, stride=patch, num_prefix=1,
                                offset=offset, antialias=antialias)
    assert torch.allclose(centres, ordinary, atol=2e-5, rtol=0)


def test_half_stride_tokens_at_even_positions_sit_at_the_ordinary_centres():
    # With s = P / 2, token (2i, 2j) covers the same pixels as ordinary patch (i, j): same centre,
    # same position encoding (DINO's rule; no antialiasing to widen the kernel).
    table = torch.randn(1, 1 + 14 * 14, 16)
    ordinary = interpolate_pos_embed(table, image_hw=(224, 320), grid_hw=(14, 20), num_prefix=1)
    half = strided_pos_embed(table, image_hw=(224, 320), patch_size=16, stride=8, num_prefix=1)
    half_grid = half[0, 1:].reshape(27, 39, 16)
    assert torch.allclose(half_grid[::2, ::2].reshape(-1, 16), ordinary[0, 1:], atol=2e-5, rtol=0)
    assert torch.equal(half[:, :1], table[:, :1])  # the CLS row is kept


def test_half_stride_patch_embedding_contains_the_ordinary_patches():
    vit = _vit("v1")
    x = torch.randn(1, 3, 40, 48)
    with torch.no_grad():
        ordinary = vit.patch_embed(x)
        overlapping, _ = vit._strided_patches(x, 4)
    assert torch.allclose(overlapping[:, ::2, ::2], ordinary, atol=1e-6)


@pytest.mark.parametrize(("stride", "message"), [
    (9, r"between 1 and the patch size 8, got 9"),
    (0, r"between 1 and the patch size 8, got 0"),
    (3, r"patch stride 3 does not divide the image's \(H - P, W - P\) = \(32, 40\) for patch size 8"),
])
def test_bad_strides_are_refused_naming_the_values(stride, message):
    with pytest.raises(ValueError, match=message):
        _vit("v1").forward_tokens(torch.randn(1, 3, 40, 48), patch_stride=stride)


def test_extractor_threads_stride_and_resnet_refuses_it():
    model = dinofeat.load(TINY_VIT, pretrained=False)
    x = torch.randn(2, 3, 40, 48)
    assert model.patch_tokens(x, stride=4).shape == (2, 9, 11, 32)
    assert torch.equal(model.patch_tokens(x, stride=8), model.patch_tokens(x))
    assert model.cls_attention(x, stride=4).shape == (2, 2, 9, 11)
    out = model.features(x, outputs=("patches", "attention"), stride=4)
    assert torch.equal(out["patches"], model.patch_tokens(x, stride=4))
    assert torch.equal(out["attention"], model.cls_attention(x, stride=4))
    with pytest.raises(ValueError, match="upsample=True needs the ordinary grid"):
        model.cls_attention(x, stride=4, upsample=True)
    resnet = build_backbone(ResNetConfig())
    with pytest.raises(NotImplementedError, match="ResNet has no patches to overlap"):
        resnet.forward_tokens(torch.randn(1, 3, 64, 64), patch_stride=4)


def test_dinov3_half_stride_puts_rope_at_the_new_patch_centres():
    vit = _v3()
    x = torch.randn(1, 3, 40, 48)
    with torch.no_grad():
        out = vit.forward_tokens(x, cls_attention=True, patch_stride=4)
        _, grid, (sin, cos) = vit.prepare_tokens(x, 4)
        _, _, (sin0, cos0) = vit.prepare_tokens(x)
    assert out.grid == grid == (9, 11) and out.registers.shape == (1, 4, 32)
    assert out.cls_attention.shape[-1] == 5 + 9 * 11
    # Token (2i, 2j) covers ordinary patch (i, j): the same rotation, bit for bit.
    even = torch.arange(99).reshape(9, 11)[::2, ::2].flatten()
    assert torch.equal(sin[even], sin0) and torch.equal(cos[even], cos0)
    with pytest.raises(ValueError, match=r"patch stride 3 does not divide"):
        vit.forward_tokens(x, patch_stride=3)


def test_dinov3_convnext_refuses_a_stride():
    convnext = build_backbone(arch_from_dict({"family": "dinov3_convnext", "depths": [1, 1, 1, 1],
                                              "dims": [8, 8, 8, 8]}))
    with pytest.raises(NotImplementedError, match="ConvNeXt has no patches to overlap"):
        convnext.forward_tokens(torch.randn(1, 3, 64, 64), patch_stride=16)
