"""The forward half of the official one-step golden through dinofeat: the golden's student, EMA teacher and
Gram teacher load strictly into DinoV3VisionTransformer, the heads into DINOv3Head, and the student's training
forward (masks, local crops, untied local CLS norm, bf16 RoPE), the teacher's head outputs and the Gram
teacher's resized patch tokens match the golden's intermediates; so do the Gram and KoLeo losses and, with the
logged DINO / iBOT terms, the total. The step itself (Sinkhorn-Knopp, backward, clipping, AdamW, EMA, Gram
refresh) comes with the DINOv2 objective's step."""

from __future__ import annotations

import torch

from dinofeat.training.objectives.dinov3.combine import LossWeights, combine_losses
from dinofeat.training.objectives.dinov3.gram import gram_anchoring_loss
from dinofeat.training.objectives.dinov3.koleo import koleo_loss_distributed
from tests.helpers.dinov3_train import (
    BF16_ROPE_RTOL,
    assert_bf16_rope_close,
    assert_rel_close,
    golden_json,
    golden_tensors,
    gram_options,
    scheduled,
)
from tests.helpers.dinov3_train_step import load_step_models, replay_forward

#: Golden intermediates that need the Sinkhorn-Knopp targets (the DINOv2 objective's).
NEEDS_SINKHORN = {"teacher.cls_centered", "teacher.masked_patch_centered"}


def test_intermediates_of_the_forward_match_the_official_step():
    ref = golden_tensors("train_step")
    stored = {key.removeprefix("intermediate."): value for key, value in ref.items()
              if key.startswith("intermediate.")}
    ours = replay_forward(load_step_models())
    assert set(stored) - set(ours) == NEEDS_SINKHORN
    for name, value in ours.items():
        assert_bf16_rope_close(value.detach(), stored[name], name)


def test_gram_koleo_and_total_losses_of_the_step():
    step = golden_json()["train_step"]
    config, logged, it = step["config"], step["loss_dict"], step["iteration"]
    out = replay_forward(load_step_models())
    masks = golden_tensors("train_step")["input.collated_masks"]
    student_patches = out["student_global.patch_pre_head"].flatten(0, 1)
    teacher_patches = out["gram.teacher_patches"]
    gram = gram_anchoring_loss(student_patches, teacher_patches, masks, gram_options(config["gram"]))
    assert_rel_close(gram.detach(), logged["gram_loss"], "gram_loss")
    koleo = torch.stack([koleo_loss_distributed(x, topk=config["dino"]["koleo_topk"])
                         for x in out["student_global.cls_pre_head"]]).mean()
    assert_rel_close(koleo.detach(), logged["koleo_loss"], "koleo_loss")
    length, epochs = config["train"]["OFFICIAL_EPOCH_LENGTH"], config["optim"]["epochs"]
    local_weight = scheduled(config["dino"]["local_loss_weight_schedule"], length, epochs, it)
    gram_weight = scheduled(config["gram"]["loss_weight_schedule"], length, epochs, it)
    assert (local_weight, gram_weight) == (logged["dino_local_loss_weight"], logged["gram_loss_weight"])
    assert local_weight is not None and gram_weight is not None
    dino, ibot = config["dino"], config["ibot"]
    total = combine_losses(
        dino_global=torch.tensor(logged["dino_global_crops_loss"]),
        dino_local=torch.tensor(logged["dino_local_crops_loss"]), koleo=koleo,
        ibot=torch.tensor(logged["ibot_loss"]), n_global=out["student_global.cls_pre_head"].shape[0],
        n_local=out["student_local.cls_pre_head"].shape[0],
        weights=LossWeights(dino=dino["loss_weight"], koleo=dino["koleo_loss_weight"],
                            ibot=ibot["loss_weight"], global_ignore_diagonal=dino["global_ignore_diagonal"]),
        local_weight=local_weight, gram=gram, gram_weight=gram_weight)
    assert_rel_close(total.detach(), step["total_loss"], "total_loss")


def test_fp32_rope_is_not_what_official_training_computes():
    ref = golden_tensors("train_step")
    variant = golden_json()["train_step"]["variant_rope_fp32"]["max_abs_diff_to_official"]
    ours = replay_forward(load_step_models(), rope_dtype=None)  # the config's fp32 periods
    for name, expected in variant.items():
        diff = (ours[name.removeprefix("intermediate.")] - ref[name]).abs().max().item()
        assert abs(diff - expected) <= 0.1 * expected, (name, diff, expected)
        assert diff > 5 * BF16_ROPE_RTOL * ref[name].abs().max().item()  # the bf16 bound tells them apart


def test_weights_after_the_step_load_strictly_too():
    before, after = load_step_models(), load_step_models("after")
    assert after.gram_teacher is after.teacher  # refreshed from the EMA teacher after this step
    for role in ("student", "teacher"):
        old, new = getattr(before, role).state_dict(), getattr(after, role).state_dict()
        assert old.keys() == new.keys() and not torch.equal(old["cls_token"], new["cls_token"])
    assert after.heads.keys() == before.heads.keys()
