"""The DINOv3 ViT's training behaviour on tiny models: RoPE coordinate augmentation (new draws per block and
crop group, train mode only, torch's generator in the official order), the official subset stochastic depth,
the mask token on masked global-crop patches, the untied local-crop CLS norm, bf16 RoPE in the training
forward, and the config field ``drop_path_rate``. Eval mode stays what it was."""

from __future__ import annotations

import math

import pytest
import torch

import dinofeat.models.dinov3.rope as rope_module
from dinofeat.models import arch_from_dict, build_backbone
from dinofeat.models.dinov3 import DinoV3Config, DinoV3VisionTransformer
from dinofeat.models.dinov3.model import subset_residual
from dinofeat.models.dinov3.rope import augment_coords, grid_centres, normalized_coords
from dinofeat.registry import ZOO
from tests.helpers.dinov3 import TINY_V3


def _vit(**extra: object) -> DinoV3VisionTransformer:
    torch.manual_seed(0)
    model = build_backbone(arch_from_dict({**TINY_V3, "patch_size": 8, "depth": 3, **extra}))
    assert isinstance(model, DinoV3VisionTransformer)
    return model


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every (coordinates before, after) augmentation the model draws."""
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def spy(coords: torch.Tensor, **kwargs: float | None) -> torch.Tensor:
        out = augment_coords(coords, **kwargs)
        calls.append((coords, out))
        return out

    monkeypatch.setattr(rope_module, "augment_coords", spy)
    return calls


def test_rescale_is_drawn_per_block_and_crop_group_in_train_mode_only(drawn):
    model = _vit(pos_embed_rope_rescale_coords=2.0)
    crops, local = torch.randn(2, 3, 32, 32), torch.randn(4, 3, 16, 16)
    model.train().forward_training(crops, local)
    assert len(drawn) == model.depth * 2  # blocks x groups
    factors = [(after / before).flatten() for before, after in drawn]
    for factor in factors:  # one factor for both axes, log-uniform within [1/2, 2]
        torch.testing.assert_close(factor, factor[:1].expand_as(factor), rtol=1e-2, atol=0)
        assert 0.5 <= factor[0].item() <= 2.0
    assert len({round(f[0].item(), 3) for f in factors}) == len(factors)  # a new draw every time
    assert [len(before) for before, _ in drawn] == [16, 4] * model.depth  # global then local, per block
    drawn.clear()
    model.forward_tokens(crops)  # the one-group forward draws per block too
    assert len(drawn) == model.depth
    drawn.clear()
    model.eval().forward_training(crops, local)
    model.forward_tokens(crops)
    assert drawn == []


def test_draws_follow_torchs_generator_in_the_official_order(drawn):
    model = _vit(pos_embed_rope_shift_coords=0.5, pos_embed_rope_jitter_coords=1.5,
                 pos_embed_rope_rescale_coords=2.0).train()
    crops = torch.randn(2, 3, 32, 24)
    torch.manual_seed(3)
    model.forward_training(crops, rope_dtype=None)
    torch.manual_seed(3)
    base = normalized_coords(*grid_centres(4, 3), (4, 3))
    for before, after in drawn:  # per block: shift (2), jitter (2), rescale (1), uniform draws in order
        shift = torch.empty(2).uniform_(-0.5, 0.5)
        jitter = torch.empty(2).uniform_(-math.log(1.5), math.log(1.5)).exp()
        rescale = torch.empty(1).uniform_(-math.log(2.0), math.log(2.0)).exp()
        torch.testing.assert_close(before, base)
        torch.testing.assert_close(after, (base + shift) * jitter * rescale, rtol=0, atol=0)


def test_eval_ignores_augmentation_and_train_mode_without_it_equals_eval():
    plain = _vit(layerscale_init=None)
    augmented = _vit(layerscale_init=None, pos_embed_rope_shift_coords=1.0, pos_embed_rope_rescale_coords=2.0,
                     drop_path_rate=0.5)
    x = torch.randn(3, 3, 32, 40)
    with torch.no_grad():
        reference = plain.eval().forward_tokens(x).tokens
        assert torch.equal(augmented.eval().forward_tokens(x).tokens, reference)
        assert torch.equal(plain.train().forward_tokens(x).tokens, reference)
        assert not torch.equal(augmented.train().forward_tokens(x).tokens, reference)


def test_training_forward_in_the_models_rope_dtype_is_the_eval_forward():
    model = _vit(untie_cls_and_patch_norms=True, layerscale_init=None).eval()  # no 1e-5 damping
    crops, local = torch.randn(2, 3, 32, 32), torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        out = model.forward_training(crops, local, rope_dtype=None)
        tokens = model.forward_tokens(crops).tokens
        local_tokens = model.forward_tokens(local).tokens
    glob = out.global_crops
    assert torch.equal(glob.cls, tokens[:, 0]) and torch.equal(glob.storage, tokens[:, 1:5])
    assert torch.equal(glob.patches, tokens[:, 5:]) and glob.grid == (4, 4)
    assert out.local_crops is not None and torch.equal(out.local_crops.cls, local_tokens[:, 0])
    bf16 = model.forward_training(crops).global_crops.patches  # the default: official training's bf16 RoPE
    assert not torch.equal(bf16, out.global_crops.patches)
    torch.testing.assert_close(bf16, out.global_crops.patches, rtol=0, atol=0.05)
    assert model.rope_embed.periods.dtype == torch.float32  # the buffer is left as configured


def test_rope_runs_in_bf16_in_the_training_forward(monkeypatch):
    seen: list[torch.dtype] = []
    original = rope_module.rotate_patches

    def spy(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
        seen.append(sin.dtype)
        return original(x, sin, cos)

    monkeypatch.setattr("dinofeat.models.dinov3.model.rotate_patches", spy)
    model = _vit()  # TINY_V3: fp32 periods
    model.forward_training(torch.randn(1, 3, 16, 16))
    assert seen and set(seen) == {torch.bfloat16}
    seen.clear()
    model.forward_tokens(torch.randn(1, 3, 16, 16))
    assert set(seen) == {torch.float32}


def test_mask_token_replaces_exactly_the_masked_patches_of_global_crops():
    model = _vit()
    with torch.no_grad():
        model.mask_token.normal_()
    x = torch.randn(2, 3, 32, 32)
    masks = torch.rand(2, 16) < 0.4
    masks[0, 0] = True
    plain, _, _ = model.embed_tokens(x)
    masked, _, _ = model.embed_tokens(x, masks=masks)
    prefix = model.num_prefix_tokens
    assert torch.equal(masked[:, :prefix], plain[:, :prefix])
    assert torch.equal(masked[:, prefix:][~masks], plain[:, prefix:][~masks])
    assert torch.equal(masked[:, prefix:][masks], model.mask_token.expand(int(masks.sum()), -1))
    # local crops are never masked: in eval mode (no random draws) their outputs ignore the masks
    local = torch.randn(4, 3, 16, 16)
    model.eval()
    with torch.no_grad():
        with_masks = model.forward_training(x, local, masks=masks)
        without = model.forward_training(x, local)
    assert with_masks.local_crops is not None and without.local_crops is not None
    assert torch.equal(with_masks.local_crops.prenorm, without.local_crops.prenorm)
    assert not torch.equal(with_masks.global_crops.prenorm, without.global_crops.prenorm)
    with pytest.raises(ValueError, match=r"shape \(images, patches\) = \(2, 16\), got torch.bool"):
        model.forward_training(x, masks=masks[:, :8])


def test_local_crops_use_the_untied_local_cls_norm_in_training_only():
    model = _vit(untie_global_and_local_cls_norm=True)
    assert model.local_cls_norm is not None
    with torch.no_grad():
        model.local_cls_norm.weight.uniform_(0.5, 2.0)
    crops, local = torch.randn(2, 3, 32, 32), torch.randn(4, 3, 16, 16)
    for training in (True, False):
        model.train(training)
        torch.manual_seed(1)
        with torch.no_grad():
            out = model.forward_training(crops, local)
        assert out.local_crops is not None
        loc, glob = out.local_crops, out.global_crops
        local_norm = model.local_cls_norm if training else model.norm
        assert torch.equal(loc.cls, local_norm(loc.prenorm[:, :5])[:, 0])
        assert torch.equal(loc.storage, local_norm(loc.prenorm[:, :5])[:, 1:])
        assert torch.equal(loc.patches, model.norm(loc.prenorm[:, 5:]))
        assert torch.equal(glob.cls, model.norm(glob.prenorm[:, :5])[:, 0])


def _reference_block(block: torch.nn.Module, xs: list[torch.Tensor], ropes: list, rate: float
                     ) -> list[torch.Tensor]:
    """The official subset stochastic depth written out: attention subsets for every group, then MLP ones."""
    def residual(x: torch.Tensor, branch) -> torch.Tensor:
        size = max(int(len(x) * (1 - rate)), 1)
        kept = torch.randperm(len(x))[:size]
        return torch.index_add(x, 0, kept, branch(x[kept]), alpha=len(x) / size)

    xs = [residual(x, lambda y, r=rope: block.ls1(block.attn(block.norm1(y), r)[0]))
          for x, rope in zip(xs, ropes, strict=True)]
    return [residual(x, lambda y: block.ls2(block.mlp(block.norm2(y)))) for x in xs]


def test_drop_path_is_the_official_subset_version_with_its_generator_order():
    model = _vit(drop_path_rate=0.4).train()
    block = model.blocks[0]
    xs = [torch.randn(5, 21, 32), torch.randn(8, 9, 32)]
    ropes = [model.rope_embed.for_grid(4, 4), model.rope_embed.for_grid(2, 2)]
    torch.manual_seed(7)
    got, _ = block(xs, ropes)
    state = torch.random.get_rng_state()
    torch.manual_seed(7)
    expected = _reference_block(block, xs, ropes, 0.4)
    assert torch.equal(torch.random.get_rng_state(), state)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=0, atol=0)
    seen: list[int] = []
    hook = block.norm1.register_forward_hook(lambda _m, args, _o: seen.append(len(args[0])))
    block(xs, ropes)
    hook.remove()
    assert seen == [3, 4]  # max(int(5 * 0.6), 1), int(8 * 0.6)
    assert len(subset_residual(torch.ones(1, 2, 3), lambda y: y, 0.9)) == 1  # at least one sample


def test_drop_path_at_rate_zero_and_in_eval_mode_is_the_plain_block():
    x = torch.randn(2, 3, 32, 32)
    reference = _vit().train()
    dropping = _vit(drop_path_rate=0.3)
    torch.manual_seed(0)
    out = reference.forward_training(x, rope_dtype=None).global_crops.prenorm
    assert torch.equal(torch.random.get_rng_state(), torch.manual_seed(0).get_state())  # nothing drawn
    with torch.no_grad():
        expected = reference.eval().forward_tokens(x).tokens
        assert torch.equal(dropping.eval().forward_tokens(x).tokens, expected)
    assert out.shape == (2, 21, 32)
    with pytest.raises(ValueError, match="cls_attention is an eval-mode output"):
        dropping.train().forward_tokens(x, cls_attention=True)


def test_drop_path_rate_is_a_checked_config_field_left_out_at_zero():
    config = DinoV3Config(embed_dim=32, depth=1, num_heads=2)
    assert config.drop_path_rate == 0.0 and "drop_path_rate" not in config.to_dict()
    dropping = arch_from_dict({**config.to_dict(), "drop_path_rate": 0.2})
    assert dropping.to_dict()["drop_path_rate"] == 0.2 and arch_from_dict(dropping.to_dict()) == dropping
    for spec in ZOO.values():  # zoo configs write out as before
        if isinstance(spec.arch, DinoV3Config):
            assert "drop_path_rate" not in spec.arch.to_dict()
    for bad, message in (({"drop_path_rate": 1.0}, "drop_path_rate must lie in \\[0, 1\\)"),
                         ({"pos_embed_rope_jitter_coords": 0.5}, "jitter_coords must be >= 1"),
                         ({"pos_embed_rope_rescale_coords": 0.0}, "rescale_coords must be >= 1"),
                         ({"pos_embed_rope_shift_coords": -1.0}, "shift_coords must be >= 0")):
        with pytest.raises(ValueError, match=message):
            arch_from_dict({**config.to_dict(), **bad})
