"""The kept-samples stochastic depth equals timm's DropPath block: same draws, same outputs and
gradients, same generator state afterwards."""

from __future__ import annotations

import pytest
import torch
from dinofeat.training.config import resolve_config
from dinofeat.training.step import build_student_teacher
from timm.models.vision_transformer import Block
from torch import nn

from dinofeat.models.stochastic_depth import KeptSamplesBlock, kept_samples_residual


def _pair(drop_path: float, init_values: float | None) -> tuple[Block, KeptSamplesBlock]:
    torch.manual_seed(0)
    reference = Block(24, 2, drop_path=drop_path, init_values=init_values)
    ours = KeptSamplesBlock(24, 2, drop_path=drop_path, init_values=init_values)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours


def _run(block: nn.Module, x: torch.Tensor, seed: int
         ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    torch.manual_seed(seed)
    x = x.clone().requires_grad_()
    out = block(x)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    grads = [x.grad, *(p.grad for p in block.parameters())]
    state = torch.random.get_rng_state()
    block.zero_grad()
    return out, grads, state


@pytest.mark.parametrize("drop_path,init_values", [(0.5, None), (0.3, 1e-1), (0.0, None)])
def test_same_outputs_gradients_and_random_stream_as_timm(drop_path: float,
                                                          init_values: float | None) -> None:
    reference, ours = _pair(drop_path, init_values)
    x = torch.randn(16, 7, 24)
    for seed in range(6):
        expected, expected_grads, expected_state = _run(reference, x, seed)
        got, grads, state = _run(ours, x, seed)
        assert torch.equal(state, expected_state)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
        # Parameter gradients sum over fewer rows, in another order: equal up to rounding.
        for g, e in zip(grads, expected_grads, strict=True):
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


def test_the_branch_sees_only_the_kept_rows() -> None:
    drop = Block(4, 1, drop_path=0.5).drop_path1
    x = torch.randn(16, 3, 4)
    seen: list[int] = []

    def branch(y: torch.Tensor) -> torch.Tensor:
        seen.append(len(y))
        return torch.tanh(y) + 1

    torch.manual_seed(0)
    out = kept_samples_residual(x, branch, drop)
    torch.manual_seed(0)
    mask = x.new_empty(16, 1, 1).bernoulli_(0.5).view(-1).bool()
    assert 0 < seen[0] == int(mask.sum()) < 16
    assert torch.equal(out[~mask], x[~mask])
    assert torch.equal(out[mask], x[mask] + (torch.tanh(x[mask]) + 1) * (1 / 0.5))


def test_all_dropped_and_all_kept_and_eval_mode() -> None:
    x = torch.randn(3, 2, 4)
    drop = Block(4, 1, drop_path=0.5).drop_path1
    drop.drop_prob = 1.0 - 1e-9  # every row dropped
    assert torch.equal(kept_samples_residual(x, lambda y: y + 1, drop), x)
    drop.eval()
    assert torch.equal(kept_samples_residual(x, lambda y: y + 1, drop), x + (x + 1))


def test_the_trainer_student_uses_it() -> None:
    cfg = resolve_config(overrides=["model.arch=vit_tiny", "model.patch_size=16", "model.drop_path_rate=0.1",
                                    "head.out_dim=64", "run.device=cpu"])
    student, _, _ = build_student_teacher(cfg)
    assert all(type(b) is KeptSamplesBlock for b in student.backbone.blocks)
    assert student.backbone.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
