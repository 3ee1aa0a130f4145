"""The ViT's training-only parts: DINOv2's iBOT mask token and the official register layout."""

from __future__ import annotations

import torch

from dinofeat.models.vit.config import ViTConfig
from dinofeat.models.vit.model import DinoVisionTransformer


def test_mask_token_replaces_masked_patches_before_the_positions() -> None:
    torch.manual_seed(0)
    config = ViTConfig(patch_size=8, embed_dim=16, depth=1, num_heads=2, img_size=16)
    vit = DinoVisionTransformer(config).eval()
    vit.add_mask_token()
    assert vit.mask_token is not None
    with torch.no_grad():
        vit.mask_token.normal_()
    images = torch.randn(2, 3, 16, 16)
    none = torch.zeros(2, 4, dtype=torch.bool)
    tokens, _ = vit.embed_tokens(images)
    assert torch.equal(vit.embed_tokens(images, masks=none)[0], tokens)
    masks = none.clone()
    masks[0, 2] = True
    masked, _ = vit.embed_tokens(images, masks=masks)
    assert vit.pos_embed is not None
    torch.testing.assert_close(masked[0, 3], vit.mask_token[0] + vit.pos_embed[0, 3])
    assert torch.equal(masked[1], tokens[1]) and torch.equal(masked[0, :3], tokens[0, :3])


def test_official_register_layout_positions_cls_and_patches_only() -> None:
    torch.manual_seed(0)
    config = ViTConfig(patch_size=8, embed_dim=16, depth=1, num_heads=2, img_size=16, num_register_tokens=3)
    vit = DinoVisionTransformer(config).eval()
    assert vit.pos_embed is not None and vit.reg_token is not None and vit.cls_token is not None
    assert vit.pos_embed.shape == (1, 1 + 4, 16)
    images = torch.randn(2, 3, 16, 16)
    tokens, _ = vit.embed_tokens(images)
    patches = vit.patch_embed(images).reshape(2, 4, 16)
    torch.testing.assert_close(tokens[:, 0], (vit.cls_token + vit.pos_embed[:, :1])[:, 0].expand(2, -1))
    torch.testing.assert_close(tokens[:, 1:4], vit.reg_token.expand(2, -1, -1))
    torch.testing.assert_close(tokens[:, 4:], patches + vit.pos_embed[:, 1:])
    assert vit.forward_tokens(images).patches.shape == (2, 4, 16)
