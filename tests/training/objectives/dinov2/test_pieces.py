"""The DINOv2 pieces on their own, on generated inputs: block masking and the collate's rules, Sinkhorn-Knopp,
KoLeo, the parameter groups, the schedules."""

from __future__ import annotations

import math
import random

import pytest
import torch
from torch import nn

from dinofeat.models import family_of
from dinofeat.models.vit.config import ViTConfig
from dinofeat.models.vit.model import DinoVisionTransformer
from dinofeat.training.objectives.dinov2.centering import sinkhorn_knopp
from dinofeat.training.objectives.dinov2.losses import koleo_loss
from dinofeat.training.objectives.dinov2.masking import BlockMasking, draw_batch_masks, max_block_patches
from dinofeat.training.objectives.dinov2.param_groups import apply_schedule, dinov2_param_groups
from dinofeat.training.objectives.dinov2.schedules import IterationSchedule, sqrt_scaled_lr


@pytest.mark.parametrize("target", [0, 3, 20, 60, 98])
def test_block_masks_never_exceed_their_target_and_are_rectangles_of_4_or_more(target: int) -> None:
    generator = BlockMasking((14, 14), max_block_patches(224, 16))
    assert generator.max_patches == 98 and max_block_patches(224, 14) == 128  # half the grid
    for seed in range(20):
        mask = generator(target, random.Random(seed))
        assert mask.shape == (14, 14) and mask.sum() <= target
        if target >= 4:
            assert mask.sum() > 0  # a 14 x 14 grid always fits a first block


def test_batch_masks_follow_the_collate_rules() -> None:
    generator = BlockMasking((4, 4), max_block_patches(56, 14))
    batch = draw_batch_masks(8, generator, 0.5, (0.1, 0.5), random.Random(3))
    bins = torch.linspace(0.1, 0.5, 5)
    assert batch.upperbound == sum(int(16 * bins[i + 1]) for i in range(4))  # 3 + 4 + 6 + 8
    counts = batch.masks.sum(-1)
    assert int((counts > 0).sum()) <= 4 and int(counts.max()) <= 8
    assert len(batch.indices()) == int(counts.sum())
    torch.testing.assert_close(batch.weights().sum(), torch.tensor(float((counts > 0).sum())))
    again = draw_batch_masks(8, generator, 0.5, (0.1, 0.5), random.Random(3))
    assert torch.equal(batch.masks, again.masks)  # a function of the stream
    none = draw_batch_masks(8, generator, 0.0, (0.1, 0.5), random.Random(3))
    assert not none.masks.any() and none.upperbound == 0 and len(none.weights()) == 0


def test_sinkhorn_knopp_equipartitions_and_matches_a_float64_reference() -> None:
    torch.manual_seed(0)
    logits = torch.randn(12, 5) * 0.1
    targets = sinkhorn_knopp(logits, 0.05)
    torch.testing.assert_close(targets.sum(-1), torch.ones(12))
    # three iterations come close to the equipartition (each prototype 12 / 5 of the mass)
    torch.testing.assert_close(targets.sum(0), torch.full((5,), 12 / 5), atol=0.15, rtol=0)
    q = torch.exp(logits.double() / 0.05).t()
    q /= q.sum()
    for _ in range(3):
        q /= q.sum(1, keepdim=True) * 5
        q /= q.sum(0, keepdim=True) * 12
    torch.testing.assert_close(targets.double(), (q * 12).t(), atol=1e-6, rtol=0)


def test_koleo_is_minus_the_mean_log_nearest_neighbour_distance() -> None:
    torch.manual_seed(0)
    x = torch.randn(7, 4)
    unit = x / x.norm(dim=-1, keepdim=True)
    distances = torch.cdist(unit, unit) + torch.eye(7) * 10
    expected = -torch.log(distances.min(dim=1).values).mean()
    torch.testing.assert_close(koleo_loss(x), expected, atol=1e-5, rtol=0)


def test_parameter_groups_decay_layers_and_exempt_norms_biases_and_gammas() -> None:
    config = ViTConfig(patch_size=8, embed_dim=16, depth=3, num_heads=2, img_size=16, layer_scale_init=1e-5,
                       num_register_tokens=2)
    backbone = DinoVisionTransformer(config)
    backbone.add_mask_token()
    head = nn.Sequential(nn.Linear(16, 4))
    layer_of = family_of(config).layer_of_parameter
    assert layer_of is not None
    groups = dinov2_param_groups({"backbone": backbone, "dino_head": head}, 3, 0.5, 0.2, layer_of)
    by_name = {name: g for g in groups for name in g["names"]}
    for name in ("cls_token", "pos_embed", "reg_token", "mask_token"):
        group = by_name[f"backbone.{name}"]
        assert group["lr_mult"] == 0.5 ** 4 and group["wd_mult"] == 1
    assert by_name["backbone.patch_embed.proj.weight"]["lr_mult"] == 0.5 ** 4 * 0.2
    assert by_name["backbone.blocks.2.attn.qkv.weight"]["lr_mult"] == 0.5
    assert by_name["backbone.blocks.0.ls1.gamma"]["wd_mult"] == 0
    assert by_name["backbone.norm.weight"]["wd_mult"] == 0
    assert by_name["dino_head.0.weight"]["lr_mult"] == 1
    assert by_name["dino_head.0.bias"]["wd_mult"] == 0
    apply_schedule(groups, lr=1.0, wd=0.1, last_layer_lr=0.0)
    assert by_name["backbone.blocks.2.attn.qkv.weight"]["lr"] == 0.5
    assert by_name["backbone.blocks.2.attn.qkv.weight"]["weight_decay"] == pytest.approx(0.1)


def test_schedules_repeat_the_peak_and_hold_the_final_value() -> None:
    schedule = IterationSchedule.cosine(1.0, 0.1, total=6, warmup=2, start=0.5)
    assert [schedule[i] for i in (0, 1, 2)] == [0.5, 1.0, 1.0]
    assert schedule[5] > 0.1 and schedule[6] == schedule[100] == 0.1
    assert schedule.frozen(3)[2] == 0.0 and schedule.frozen(3)[3] == schedule[3]
    temperature = IterationSchedule.cosine(0.07, 0.07, 0, 0, 0.04)  # no warm-up: the final value throughout
    assert temperature[0] == 0.07
    assert sqrt_scaled_lr(0.004, 64, 32) == 0.004 * math.sqrt(2)
    with pytest.raises(ValueError, match="warm-up"):
        IterationSchedule.cosine(1.0, 0.0, total=2, warmup=3)
