"""Gram anchoring against the official goldens: every loss option with its gradient, the Gram teacher's
resize in every mode, the official order (resize, then normalise) and remove_only_teacher_neg."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dinofeat.training.objectives.dinov3.gram import (
    GramOptions,
    gram_anchoring_loss,
    gram_loss,
    gram_stats,
    resize_patch_features,
    select_tokens,
)
from dinofeat.training.objectives.dinov3.gram_teacher import GramRefresh
from tests.helpers.dinov3_train import assert_rel_close, golden_json, golden_tensors


def _square(tokens: int) -> tuple[int, int]:
    side = round(tokens**0.5)
    assert side * side == tokens, f"{tokens} patches are not a square grid"
    return side, side


def _options(case: dict) -> GramOptions:
    return GramOptions(normalized=case["apply_norm"], img_level=case["img_level"],
                       remove_neg=case["neg"] == "remove_neg",
                       remove_only_teacher_neg=case["neg"] == "remove_only_teacher_neg",
                       tokens_used=case["tokens_used"])


def test_every_resize_mode_matches_the_official_interpolation():
    ref = golden_tensors("gram")
    cases = golden_json()["gram"]["resize"]
    assert cases
    for name, case in cases.items():
        teacher = ref[f"teacher{case['teacher_grid']}.patches_highres"]
        student_grid = _square(ref[f"student{case['student_grid']}.patches"].shape[1])
        got = resize_patch_features(teacher, _square(teacher.shape[1]), student_grid, mode=case["mode"],
                                    antialias=case["antialias"])
        assert_rel_close(got, ref[f"{name}.teacher_patches_resized"], name)


def test_every_loss_case_and_its_gradient_match_official():
    ref = golden_tensors("gram")
    cases = golden_json()["gram"]["cases"]
    with_grad = 0
    for name, case in cases.items():
        student = ref[case["student"]].clone().requires_grad_()
        masks = ref[case["student"].replace(".patches", ".masks")]
        loss = gram_anchoring_loss(student, ref[case["teacher"]], masks, _options(case))
        assert_rel_close(loss.detach(), case["loss"], name)
        if f"{name}.grad_student" in ref:
            loss.backward()
            assert_rel_close(student.grad, ref[f"{name}.grad_student"], f"{name}.grad_student")
            with_grad += 1
    assert len(cases) >= 8 and with_grad >= 8


def test_remove_only_teacher_neg_leaves_the_student_as_official_code_does():
    ref = golden_tensors("gram")
    cases = {k: c for k, c in golden_json()["gram"]["cases"].items()
             if "natural_reimpl_both_negative_zeroed_loss" in c}
    assert cases
    for name, case in cases.items():
        student, teacher = ref[case["student"]], ref[case["teacher"]]
        official = gram_loss(student, teacher, normalized=True, img_level=True, remove_only_teacher_neg=True)
        assert_rel_close(official, case["loss"], name)
        # The natural reading, zeroing the student where both are negative, is another loss.
        s, t = F.normalize(student, dim=-1), F.normalize(teacher, dim=-1)
        sim_s, sim_t = s @ s.transpose(1, 2), t @ t.transpose(1, 2)
        natural = F.mse_loss(torch.where((sim_s < 0) & (sim_t < 0), 0.0, sim_s), sim_t.clamp(min=0))
        assert_rel_close(natural, case["natural_reimpl_both_negative_zeroed_loss"], f"{name} natural")
        assert abs(natural.item() - case["loss"]) > 100 * 1e-5 * case["loss"]


def test_the_teacher_is_resized_before_it_is_normalised():
    ref = golden_tensors("gram")
    cases = {k: c for k, c in golden_json()["gram"]["cases"].items()
             if "natural_reimpl_normalise_before_resize_loss" in c}
    assert cases
    for name, case in cases.items():
        student = ref[case["student"]]
        highres = ref[f"teacher{case['teacher_grid']}.patches_highres"]
        source, target = _square(highres.shape[1]), _square(student.shape[1])
        ours = gram_loss(student, resize_patch_features(highres, source, target))
        assert_rel_close(ours, case["loss"], name)
        swapped = gram_loss(student, resize_patch_features(F.normalize(highres, dim=-1), source, target))
        assert_rel_close(swapped, case["natural_reimpl_normalise_before_resize_loss"], f"{name} swapped")


def test_stats_are_the_batch_level_masked_and_unmasked_losses():
    ref = golden_tensors("gram")
    cases = golden_json()["gram"]["cases"]
    name = next(k for k, c in cases.items()
                if c["tokens_used"] == "all" and c["img_level"] and c["apply_norm"] and c["neg"] == "none")
    case = cases[name]
    student, teacher = ref[case["student"]].clone().requires_grad_(), ref[case["teacher"]]
    masks = ref[case["student"].replace(".patches", ".masks")]
    stats = gram_stats(student, teacher, masks, _options(case))
    for tokens in ("masked", "unmasked"):
        batch_case = cases[name.replace("img1.all", f"img0.{tokens}")]
        assert_rel_close(stats[f"stats_only/{tokens}_gram_loss"], batch_case["loss"], tokens)
        assert not stats[f"stats_only/{tokens}_gram_loss"].requires_grad


def test_options_and_inputs_are_checked_with_named_errors():
    with pytest.raises(ValueError, match="remove_neg and remove_only_teacher_neg"):
        GramOptions(remove_neg=True, remove_only_teacher_neg=True)
    with pytest.raises(ValueError, match=r"needs gram\.img_level=False"):
        GramOptions(tokens_used="masked")
    with pytest.raises(ValueError, match="tokens_used must be"):
        GramOptions(tokens_used="some", img_level=False)  # type: ignore[arg-type]
    x = torch.randn(2, 4, 8)
    with pytest.raises(ValueError, match="differ in shape"):
        gram_loss(x, torch.randn(2, 5, 8))
    with pytest.raises(ValueError, match="per-image Gram matrices"):
        gram_loss(x.flatten(0, 1), x.flatten(0, 1))
    with pytest.raises(ValueError, match="needs bool masks"):
        select_tokens(x, x, torch.ones(2, 3, dtype=torch.bool), "masked")
    with pytest.raises(ValueError, match="not \\(images, 3x3 patches"):
        resize_patch_features(x, (3, 3), (2, 2))
    with pytest.raises(ValueError, match="'bicubic' or 'bilinear'"):
        resize_patch_features(x, (2, 2), (1, 1), mode="nearest")  # type: ignore[arg-type]
    assert resize_patch_features(x, (2, 2), (2, 2)) is x


def test_gram_refresh_follows_the_official_counter():
    step = golden_json()["train_step"]
    gram = step["config"]["gram"]
    refresh = GramRefresh(rep_update=gram["rep_update"], it_first_update=gram["it_first_update"],
                          update_frequency=gram["update_frequency"], max_updates=gram["max_updates"])
    it = step["iteration"]
    assert refresh.due_after(it, refresh.updates_before(it)) is step["gram_teacher_refreshed_after_step"]
    # The Gram-anchoring stage's numbers: refreshed after 1,009,999 / 1,019,999 / 1,029,999, then frozen.
    stage = GramRefresh(it_first_update=1_010_000, update_frequency=10_000, max_updates=3)
    done, refreshed = 0, []
    for it in range(1_000_000, 1_060_000):
        assert stage.updates_before(it) == done  # a run resumed here counts what the loop did
        if stage.due_after(it, done):
            refreshed.append(it)
            done += 1
    assert refreshed == [1_009_999, 1_019_999, 1_029_999]
    assert not GramRefresh(rep_update=False, update_frequency=10).due_after(9, 0)
    assert GramRefresh(it_load_ema_teacher=5).load_ema_before(5) and not GramRefresh().load_ema_before(0)
    with pytest.raises(ValueError, match="update_frequency"):
        GramRefresh(update_frequency=0)
