"""The loss combination against the official meta arch (combine.safetensors): for every official config and
iteration, the local-loss and Gram weights from their schedules, the Gram and KoLeo terms from the golden
inputs, the total from the logged terms, and the total's gradient w.r.t. the Gram and KoLeo inputs.

The DINO CLS and iBOT terms (Sinkhorn-Knopp targets) enter as the golden's logged values; their own
functions belong to the DINOv2 objective."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from dinofeat.training.objectives.dinov3.combine import LossWeights, combine_losses, dino_term_scales
from dinofeat.training.objectives.dinov3.gram import gram_anchoring_loss, gram_stats
from dinofeat.training.objectives.dinov3.koleo import koleo_loss_distributed
from tests.helpers.dinov3_train import assert_rel_close, golden_json, golden_tensors, gram_options, scheduled


def _weights_at(settings: dict[str, Any], iteration: int) -> tuple[float, float | None]:
    """(w_local, w_gram) of a config at an iteration: schedules when the config has them."""
    length, epochs = settings["OFFICIAL_EPOCH_LENGTH"], settings["epochs"]
    local = 1.0
    if settings["reweight_dino_local_loss"]:
        local = scheduled(settings["local_loss_weight_schedule"], length, epochs, iteration) or 0.0
    if not settings["gram_use_loss"]:
        return local, None
    gram = scheduled(settings["gram"]["loss_weight_schedule"], length, epochs, iteration)
    return local, settings["gram"]["loss_weight"] if gram is None else gram


def _run(name: str, config: dict[str, Any], iteration: int, logged: dict[str, float]
         ) -> dict[str, torch.Tensor]:
    ref, settings = golden_tensors("combine"), config["settings"]
    inputs = {key: ref[f"input.{key}"].clone().requires_grad_()
              for key in ("student_patches", "student_global_cls_pre_head")}
    teacher, masks = ref["input.gram_teacher_patches"], ref["input.masks"]
    local_weight, gram_weight = _weights_at(settings, iteration)
    assert local_weight == pytest.approx(logged["dino_local_loss_weight"], rel=1e-12), (name, iteration)
    koleo = torch.stack([koleo_loss_distributed(x) for x in inputs["student_global_cls_pre_head"]]).mean()
    assert_rel_close(koleo.detach(), logged["koleo_loss"], f"{name} koleo")
    gram = None
    if gram_weight is not None:
        assert gram_weight == pytest.approx(logged["gram_loss_weight"], rel=1e-12), (name, iteration)
        options = gram_options(settings["gram"])
        gram = gram_anchoring_loss(inputs["student_patches"], teacher, masks, options)
        assert_rel_close(gram.detach(), logged["gram_loss"], f"{name} gram")
        if settings["gram"]["compute_stats"]:
            for key, value in gram_stats(inputs["student_patches"], teacher, masks, options).items():
                assert_rel_close(value, logged[key], f"{name} {key}")
    weights = LossWeights(dino=settings["dino_loss_weight"], koleo=settings["koleo_loss_weight"],
                          ibot=settings["ibot_loss_weight"],
                          global_ignore_diagonal=settings["global_ignore_diagonal"])
    total = combine_losses(
        dino_global=torch.tensor(logged["dino_global_crops_loss"]),
        dino_local=torch.tensor(logged["dino_local_crops_loss"]), koleo=koleo,
        ibot=torch.tensor(logged["ibot_loss"]), n_global=ref["input.student_global_cls_after_head"].shape[0],
        n_local=ref["input.student_local_cls_after_head"].shape[0], weights=weights,
        local_weight=local_weight, gram=gram, gram_weight=gram_weight or 0.0)
    assert_rel_close(total.detach(), logged["total_loss"], f"{name} it {iteration} total")
    total.backward()
    return {key: torch.zeros_like(leaf) if leaf.grad is None else leaf.grad for key, leaf in inputs.items()}


def test_every_config_and_iteration_combines_as_the_official_meta_arch():
    ref, configs = golden_tensors("combine"), golden_json()["combine"]["configs"]
    checked_grads = 0
    for name, config in configs.items():
        for it_text, logged in config["iterations"].items():
            grads = _run(name, config, int(it_text), logged)
            for key, grad in grads.items():
                ref_key = f"{name}.it{it_text}.grad.{key}"
                if ref_key in ref:
                    assert_rel_close(grad, ref[ref_key], ref_key)
                    checked_grads += 1
    assert len(configs) >= 4 and checked_grads >= 3


def test_term_scales_and_missing_terms():
    assert dino_term_scales(2, 0, False) == (1.0, 0.0)
    assert dino_term_scales(2, 2, False) == (0.5, 0.5)
    with pytest.raises(ValueError, match="no DINO loss term"):
        dino_term_scales(1, 0, True)
    one = torch.tensor(1.0)
    with pytest.raises(ValueError, match="4 local crops but no local DINO loss"):
        combine_losses(dino_global=one, dino_local=None, koleo=one, ibot=one, n_global=2, n_local=4,
                       weights=LossWeights())
    total = combine_losses(dino_global=one, dino_local=None, koleo=one, ibot=one, n_global=2, n_local=0,
                           weights=LossWeights(global_ignore_diagonal=False), gram=one, gram_weight=0.5)
    assert total.item() == pytest.approx(1.0 + 0.1 * 2 + 1.0 + 0.5)
