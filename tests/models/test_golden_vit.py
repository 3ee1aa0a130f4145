"""Equality with the official DINO ViT (../shared/golden, sections 1-2)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import dinofeat
from dinofeat.models import build_backbone
from dinofeat.models.vit.config import ViTConfig

TOL = 1e-5


def _golden_vit(golden, patch):
    backbone = build_backbone(ViTConfig(patch_size=patch, embed_dim=192, depth=4, num_heads=3)).eval()
    backbone.load_state_dict(load_file(str(golden / f"vit_p{patch}_d192.safetensors")), strict=True)
    return backbone, load_file(str(golden / f"vit_p{patch}_outputs.safetensors"))


@pytest.mark.parametrize("patch", [16, 8])
@pytest.mark.parametrize("name", ["x224", "xrect"])
def test_cls_attention_and_pos_embed_match_official(golden, patch, name):
    backbone, ref = _golden_vit(golden, patch)
    x = ref[name]
    with torch.no_grad():
        out = backbone.forward_tokens(x, cls_attention=True, blocks=range(4))
    assert (out.cls - ref[f"{name}_cls"]).abs().max() <= TOL
    assert (out.cls_attention - ref[f"{name}_attn_cls"]).abs().max() <= TOL
    pos = backbone._pos_embed_for(tuple(x.shape[2:]), out.grid)
    assert (pos - ref[f"{name}_pos_embed_used"]).abs().max() <= 1e-6
    if patch == 16:
        assert (torch.stack(out.intermediates) - ref[f"{name}_last4"]).abs().max() <= TOL


def test_non_square_pixels_on_the_stored_grid_are_resampled(golden):
    backbone, ref = _golden_vit(golden, 16)
    pos = backbone._pos_embed_for((224, 239), (14, 14))
    assert (pos - ref["edge_same_grid_nonsquare_pos_embed_used"]).abs().max() <= 1e-6


@pytest.mark.parametrize("patch", [16, 8])
def test_extractor_matches_official_on_preprocessed_tensors(golden, tmp_path, patch):
    backbone, ref = _golden_vit(golden, patch)
    from dinofeat.hub.format import HubConfig, save_pretrained

    save_pretrained(backbone, tmp_path, HubConfig(arch=backbone.config, name=f"golden_p{patch}"))
    model = dinofeat.load(tmp_path, device="cpu")
    x = ref["xrect"]
    assert (model.embed(x) - ref["xrect_cls"]).abs().max() <= TOL
    attn = model.cls_attention(x)
    h, w = 240 // patch, 320 // patch
    assert attn.shape == (2, 3, h, w)
    expected = ref["xrect_attn_cls"][:, :, 1:].reshape(2, 3, h, w)
    assert (attn - expected).abs().max() <= TOL
