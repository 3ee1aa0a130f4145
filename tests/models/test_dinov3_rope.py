"""DinoV3Config validation and the RoPE pieces, each alone."""

from __future__ import annotations

import math

import pytest
import torch

from dinofeat.models import arch_from_dict
from dinofeat.models.dinov3.config import DinoV3Config
from dinofeat.models.dinov3.rope import (
    RopeEmbedding,
    grid_centres,
    normalized_coords,
    released_periods,
    rope_periods,
    rope_sin_cos,
    rotate_patches,
)

BASE = {"family": "dinov3", "embed_dim": 64, "depth": 1, "num_heads": 4}


@pytest.mark.parametrize(("extra", "message"), [
    ({"embed_dims": 64}, r"unknown architecture config keys \['embed_dims'\]"),
    ({"ffn_layer": "swiglu16"}, "ffn_layer must be one of"),
    ({"norm_layer": "rmsnorm"}, "norm_layer must be one of"),
    ({"pos_embed_rope_dtype": "float32"}, "pos_embed_rope_dtype must be one of"),
    ({"pos_embed_rope_base": None}, "either pos_embed_rope_base or both"),
    ({"pos_embed_rope_min_period": 0.5, "pos_embed_rope_max_period": 20.0}, "either pos_embed_rope_base"),
    ({"num_heads": 5}, "divisible by 4 \\* num_heads"),
    ({"n_storage_tokens": -1}, "n_storage_tokens must be >= 0"),
])
def test_bad_dinov3_configs_are_named_errors(extra, message):
    with pytest.raises(ValueError, match=message):
        arch_from_dict({**BASE, **extra})


def test_config_round_trips_and_defaults_are_the_official_ones():
    config = arch_from_dict({**BASE, "pos_embed_rope_base": None, "pos_embed_rope_min_period": 0.5,
                             "pos_embed_rope_max_period": 20.0})
    assert arch_from_dict(config.to_dict()) == config
    default = DinoV3Config(embed_dim=64, depth=1, num_heads=4)
    assert (default.patch_size, default.ffn_layer, default.n_storage_tokens, default.layerscale_init,
            default.norm_layer, default.mask_k_bias, default.pos_embed_rope_dtype) == (
        16, "mlp", 0, None, "layernorm", False, "bf16")


def test_released_periods_are_the_bf16_rounded_values_of_the_checkpoints():
    expected = [1, 1.3359375, 1.78125, 2.375, 3.15625, 4.21875, 5.625, 7.5, 10, 13.3125, 17.75, 23.75, 31.625,
                42.25, 56.25, 75]
    assert released_periods(64).tolist() == expected
    assert rope_periods(128, base=100.0)[-1].item() == pytest.approx(86.596, abs=1e-3)
    assert rope_periods(32, min_period=0.5, max_period=20.0)[[0, -1]].tolist() == pytest.approx([0.5, 20.0])


def test_coordinates_take_any_patch_centres():
    ys, xs = grid_centres(2, 4)
    assert ys.tolist() == [0.5, 1.5] and xs.tolist() == [0.5, 1.5, 2.5, 3.5]
    coords = normalized_coords(ys, xs, (2, 4))
    assert coords.shape == (8, 2)
    assert coords[0].tolist() == [-0.5, -0.75] and coords[-1].tolist() == [0.5, 0.75]
    assert normalized_coords(ys, xs, (2, 4), "max")[:, 0].unique().tolist() == [-0.75, -0.25]  # rows / 4
    # Overlapping patches (stride 1/2 patch): centres 0.5, 1.0, 1.5 of a 2-patch extent.
    half_stride = normalized_coords(torch.tensor([0.5, 1.0, 1.5]), torch.tensor([0.5]), (2, 1))
    assert half_stride[:, 0].tolist() == [-0.5, 0.0, 0.5]


def test_rotation_leaves_prefix_tokens_and_norms_unchanged():
    periods = rope_periods(16, base=100.0)
    sin, cos = rope_sin_cos(normalized_coords(*grid_centres(2, 3), (2, 3)), periods)
    assert sin.shape == cos.shape == (6, 16)
    assert math.isclose(sin[0, 0].item(), math.sin(2 * math.pi * -0.5 / 1.0), abs_tol=1e-6)
    x = torch.randn(2, 3, 1 + 6, 16)
    rotated = rotate_patches(x, sin, cos)
    assert torch.equal(rotated[:, :, :1], x[:, :, :1])
    assert torch.allclose(rotated.norm(dim=-1), x.norm(dim=-1), atol=1e-5)  # a rotation
    assert rotate_patches(x.bfloat16(), sin, cos).dtype == torch.bfloat16


def test_periods_buffer_keeps_its_values_through_casts_and_moves():
    rope = RopeEmbedding(head_dim=16, base=100.0)
    values = rope.periods.clone()
    rope.to(torch.bfloat16).to(torch.float16).to(torch.float64)
    assert rope.periods.dtype == torch.float32 and torch.equal(rope.periods, values)
    assert "periods" in rope.state_dict()
    with torch.device("meta"):
        meta = RopeEmbedding(head_dim=16, base=100.0)
    assert meta.to(torch.bfloat16).periods.dtype == torch.float32
