"""The list forward of crops of two sizes: packed with nested-tensor attention or FlexAttention, it gives what
separate forwards give, outputs and (nested; FlexAttention has no backward on CPU) gradients."""

from __future__ import annotations

import warnings

import pytest
import torch

from dinofeat.models.vit.config import ViTConfig
from dinofeat.models.vit.list_forward import list_forward_tokens
from dinofeat.models.vit.model import DinoVisionTransformer


@pytest.mark.parametrize("method", ["nested", "flex"])
def test_packed_list_forward_equals_separate_forwards(method: str) -> None:
    torch.manual_seed(0)
    config = ViTConfig(patch_size=8, embed_dim=32, depth=2, num_heads=2, img_size=32, layer_scale_init=0.5,
                       num_register_tokens=2)
    vit = DinoVisionTransformer(config).eval()
    vit.add_mask_token()
    images = [torch.randn(3, 3, 32, 32), torch.randn(4, 3, 16, 16)]
    masks = [torch.rand(3, 16) < 0.3, None]
    expected = list_forward_tokens(vit, images, masks, "calls")
    # FlexAttention has no backward on CPU (torch 2.14), not even a forward of tensors that require grad.
    with warnings.catch_warnings(), torch.set_grad_enabled(method != "flex"):
        warnings.simplefilter("ignore")  # FlexAttention's notice that it runs unfused without compile
        got = list_forward_tokens(vit, images, masks, method, compiled=False)  # type: ignore[arg-type]
    for a, b in zip(expected, got, strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=0)
    if method == "flex":
        return
    (sum(t.sum() for t in got) + sum(t.square().sum() for t in got)).backward()
    packed_grads = {n: p.grad.clone() for n, p in vit.named_parameters() if p.grad is not None}
    vit.zero_grad()
    (sum(t.sum() for t in expected) + sum(t.square().sum() for t in expected)).backward()
    for name, param in vit.named_parameters():
        if param.grad is not None:
            scale = float(param.grad.abs().max()) + 1e-6  # gradients summed over many tokens
            torch.testing.assert_close(packed_grads[name] / scale, param.grad / scale, atol=1e-4, rtol=0)


def test_packed_list_forward_refuses_drop_path_in_training() -> None:
    vit = DinoVisionTransformer(ViTConfig(patch_size=8, embed_dim=16, depth=2, num_heads=2, img_size=16,
                                          drop_path_rate=0.1)).train()
    with pytest.raises(ValueError, match="no stochastic depth"):
        list_forward_tokens(vit, [torch.randn(1, 3, 16, 16)], method="nested")
