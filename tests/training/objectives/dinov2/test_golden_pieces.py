"""Each piece of the DINOv2 objective alone against the official intermediates of every golden iteration:
teacher targets and centres, the loss terms, KoLeo, the collate's mask bookkeeping, the parameter groups."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dinofeat.models import family_of
from dinofeat.training.engine.dinov2_step import build_dinov2_networks
from dinofeat.training.objectives.dinov2.centering import (
    batch_center,
    ema_center,
    sinkhorn_knopp,
    softmax_center,
)
from dinofeat.training.objectives.dinov2.losses import dino_terms, ibot_loss, koleo_loss
from dinofeat.training.objectives.dinov2.param_groups import dinov2_param_groups
from tests.training.dinov2_golden import Golden, golden_configs

TOL = 1e-6


def _close(got: torch.Tensor, expected: torch.Tensor, tol: float = TOL) -> None:
    torch.testing.assert_close(got, expected.reshape(got.shape), atol=tol, rtol=0)


@pytest.mark.parametrize("folder", golden_configs())
def test_targets_and_centres(folder: Path) -> None:
    golden = Golden.load(folder)
    sinkhorn = golden.config["train"]["centering"] == "sinkhorn_knopp"
    for record in golden.meta["iterations"]:
        it, temp = record["iteration"], record["teacher_temp"]
        cls, patches = (golden.intermediates[f"it{it}.{name}"] for name in
                        ("teacher_cls_after_head", "teacher_masked_patch_after_head"))
        if sinkhorn:
            dino = sinkhorn_knopp(cls, temp)
            ibot = sinkhorn_knopp(patches, temp, n_rows=torch.tensor([len(patches)]))
        else:
            dino = softmax_center(cls, golden.intermediates[f"it{it}.dino_center_used"], temp)
            ibot = softmax_center(patches, golden.intermediates[f"it{it}.ibot_center_used"].view(1, -1), temp)
            _close(batch_center(cls), golden.intermediates[f"it{it}.dino_batch_center"])
            _close(patches.mean(0, keepdim=True), golden.intermediates[f"it{it}.ibot_batch_center"])
            _close(ema_center(golden.intermediates[f"it{it}.dino_center_used"], batch_center(cls), 0.9),
                   golden.intermediates[f"it{it}.dino_center_next"])
        _close(dino, golden.intermediates[f"it{it}.teacher_dino_targets"])
        _close(ibot, golden.intermediates[f"it{it}.teacher_ibot_targets"])


@pytest.mark.parametrize("folder", golden_configs())
def test_loss_terms(folder: Path) -> None:
    golden = Golden.load(folder)
    n_local = int(golden.config["crops"]["local_crops_number"])
    koleo_weight = float(golden.config["dino"]["koleo_loss_weight"])
    for record in golden.meta["iterations"]:
        it, losses = record["iteration"], record["losses"]
        get = {name: golden.intermediates[f"it{it}.{name}"] for name in (
            "student_local_cls_after_head", "student_global_cls_after_head", "teacher_dino_targets",
            "student_masked_patch_after_head", "teacher_ibot_targets", "student_global_cls_backbone")}
        local, global_term = dino_terms(get["student_local_cls_after_head"],
                                        get["student_global_cls_after_head"], get["teacher_dino_targets"],
                                        n_local, 0.1)
        assert abs(local.item() - losses["dino_local_crops_loss"]) < TOL
        assert abs(global_term.item() - losses["dino_global_crops_loss"]) < TOL
        weights = golden.inputs[f"it{it}.masks_weight"]
        n_images = len(golden.inputs[f"it{it}.collated_masks"])
        ibot = ibot_loss(get["student_masked_patch_after_head"], get["teacher_ibot_targets"], weights,
                         n_images, 0.1)
        assert abs(ibot.item() - 2 * losses["ibot_loss"]) < TOL  # reported at half
        koleo = koleo_weight * sum(koleo_loss(rows) for rows in get["student_global_cls_backbone"].chunk(2))
        assert abs(float(koleo) - 2 * losses["koleo_loss"]) < TOL


@pytest.mark.parametrize("folder", golden_configs())
def test_mask_bookkeeping(folder: Path) -> None:
    golden = Golden.load(folder)
    for record in golden.meta["iterations"]:
        it = record["iteration"]
        masks = golden.masks(it)
        assert torch.equal(masks.indices(), golden.inputs[f"it{it}.mask_indices_list"])
        assert torch.equal(masks.weights(), golden.inputs[f"it{it}.masks_weight"])
        assert masks.masks.sum(-1).tolist() == record["n_masked_per_image"]
        n_images = len(masks.masks)
        assert sum(1 for n in record["n_masked_per_image"] if n) <= int(n_images * 0.5)


@pytest.mark.parametrize("folder", golden_configs())
def test_parameter_groups(folder: Path) -> None:
    golden = Golden.load(folder)
    cfg = golden.train_config()
    student, _, arch = build_dinov2_networks(cfg)
    layer_of = family_of(arch).layer_of_parameter
    assert layer_of is not None
    groups = dinov2_param_groups(student.parts(), arch.depth, cfg.optim.layer_decay,
                                 cfg.optim.patch_embed_lr_mult, layer_of)
    ours = {}
    for group in groups:
        for name in group["names"]:
            official = "student." + name.replace("reg_token", "register_tokens").replace(
                "parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1",
                                                                         "weight_v")
            ours[official] = (group["lr_mult"], group["wd_mult"], group["is_last_layer"])
    expected = {name: (g["lr_multiplier"], g["wd_multiplier"], g["is_last_layer"])
                for name, g in golden.meta["param_groups_by_name"].items()}
    assert ours == expected
