"""Distributed KoLeo: world size 1 against the official goldens (losses and gradients, every top-k and
group), and two gloo processes against the one-process result over the same global batch."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dinofeat.training.objectives.dinov3.koleo import koleo_loss_distributed, neighbour_distances
from tests.helpers.common import REPO_ROOT
from tests.helpers.dinov3_train import assert_rel_close, golden_json, golden_tensors
from tests.helpers.koleo_ranks import CASES, rows

KEY = re.compile(r"^distributed\.topk(\d+)\.group(None|\d+)$")


def _cases(section: dict) -> list[tuple[str, int, int | None]]:
    found = []
    for key in section:
        match = KEY.match(key)
        if match:
            found.append((key, int(match[1]), None if match[2] == "None" else int(match[2])))
    assert found, "no distributed KoLeo cases in the golden"
    return found


def test_world_size_one_matches_official_losses_and_gradients():
    ref, scalars = golden_tensors("koleo"), golden_json()["koleo"]
    crops = ref["cls_pre_head"]
    losses = []
    for crop, x in enumerate(crops):
        section = scalars[f"crop{crop}"]
        for key, topk, group in _cases(section):
            leaf = x.clone().requires_grad_()
            loss = koleo_loss_distributed(leaf, topk=topk, group_size=group)
            assert_rel_close(loss.detach(), section[key], f"crop{crop} {key}")
            grad_key = f"crop{crop}.distributed.topk{topk}.grad"
            if group is None and grad_key in ref:
                loss.backward()
                assert_rel_close(leaf.grad, ref[grad_key], grad_key)
        # top-1 over the crop is the plain KoLeo loss, gradient included
        leaf = x.clone().requires_grad_()
        plain = koleo_loss_distributed(leaf)
        plain.backward()
        assert_rel_close(plain.detach(), section["loss"], f"crop{crop} plain")
        assert_rel_close(leaf.grad, ref[f"crop{crop}.grad"], f"crop{crop}.grad")
        losses.append(plain.detach())
    assert_rel_close(torch.stack(losses).mean(), scalars["meta_arch_koleo_loss"], "meta arch mean")


def test_duplicate_rows_keep_the_official_double_epsilon():
    x, section = golden_tensors("koleo")["with_duplicate"], golden_json()["koleo"]["with_duplicate"]
    for key, topk, group in _cases(section):
        assert_rel_close(koleo_loss_distributed(x, topk=topk, group_size=group), section[key], key)
    assert_rel_close(koleo_loss_distributed(x), section["loss"], "plain")
    normed = F.normalize(x, dim=-1, eps=1e-8)  # cdist has no per-component epsilon: another loss
    dists = torch.cdist(normed, normed).fill_diagonal_(float("inf")).min(dim=1).values
    assert_rel_close(-torch.log(dists + 1e-8).mean(), section["natural_reimpl_cdist_loss"], "cdist")


def test_bad_group_sizes_and_topk_are_named_errors():
    x = torch.randn(4, 8)
    with pytest.raises(ValueError, match="multiple of the local batch 4"):
        koleo_loss_distributed(x, group_size=6)
    with pytest.raises(ValueError, match="topk must lie in \\[1, 3\\]"):
        koleo_loss_distributed(x, topk=4)
    with pytest.raises(ValueError, match="not inside"):
        neighbour_distances(x, x[:3], 0, 1)


def test_two_gloo_ranks_equal_one_process_over_the_global_batch(tmp_path: Path):
    world, local = 2, 4
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    worker = [sys.executable, "-m", "tests.helpers.koleo_ranks"]
    args = [str(world), str(tmp_path / "store"), str(tmp_path), str(local)]
    procs = [subprocess.Popen([*worker, str(rank), *args], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)
             for rank in range(world)]
    logs = [proc.communicate(timeout=120)[0].decode(errors="replace") for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), "\n".join(logs)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(world)]
    everyone = rows(world, local)
    for topk, group in CASES:
        key = f"topk{topk}.group{group}"
        size = world * local if group is None else group
        for rank in range(world):
            # One process over the rank's neighbour group, the rank's rows of it.
            first = rank * local // size * size
            leaf = everyone[first:first + size].clone().requires_grad_()
            per_row = koleo_rows(leaf, topk)
            mine = slice(rank * local - first, rank * local - first + local)
            assert_rel_close(ranks[rank][f"{key}.loss"], per_row[mine].mean(), f"{key} rank {rank} loss")
        # Gradients: each rank's gradient is that of the sum of all ranks' losses w.r.t. its rows.
        leaf = everyone.clone().requires_grad_()
        total = sum(koleo_rows(leaf[g:g + size], topk).view(-1, local).mean(dim=1).sum()
                    for g in range(0, world * local, size))
        total.backward()
        for rank in range(world):
            assert_rel_close(ranks[rank][f"{key}.grad"], leaf.grad[rank * local:(rank + 1) * local],
                             f"{key} rank {rank} grad")


def koleo_rows(x: torch.Tensor, topk: int) -> torch.Tensor:
    """Per-row KoLeo terms of one process over ``x`` (the mean over each row's ``topk`` neighbours)."""
    normed = F.normalize(x, dim=-1, eps=1e-8)
    distances = neighbour_distances(normed, normed, 0, topk)
    return -torch.log(distances + 1e-8).view(-1, topk).mean(dim=1)
