"""The kept-samples stochastic depth equals timm's DropPath block: same draws, same outputs and
gradients, same generator state afterwards."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import Block
from torch import nn

from dinofeat.models.stochastic_depth import KeptSamplesBlock, kept_samples_residual
from dinofeat.training.config.train_config import resolve_config
from dinofeat.training.engine.step import build_student_teacher


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


@pytest.mark.parametrize("drop_path,fused", [(0.5, True), (0.0, True), (0.3, False)])
def test_first_token_path_is_the_block_at_token_zero(drop_path: float, fused: bool) -> None:
    # float64: the two paths' products have other shapes, so in float32 they differ by rounding.
    _, block = _pair(drop_path, 1e-1)
    block = block.double()
    block.attn.fused_attn = fused
    x = torch.randn(16, 7, 24, dtype=torch.float64)
    for seed in range(4):
        torch.manual_seed(seed)
        x_full = x.clone().requires_grad_()
        expected = block(x_full)[:, :1]
        expected_state = torch.random.get_rng_state()
        expected_grads = torch.autograd.grad(expected.square().sum(), [x_full, *block.parameters()])
        torch.manual_seed(seed)
        x_first = x.clone().requires_grad_()
        got = block(x_first, first_token_only=True)
        assert torch.equal(torch.random.get_rng_state(), expected_state)
        grads = torch.autograd.grad(got.square().sum(), [x_first, *block.parameters()])
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
        for g, e in zip(grads, expected_grads, strict=True):
            torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("arch", [
    "vit_tiny",
    '{"patch_size": 8, "embed_dim": 48, "depth": 3, "num_heads": 3, "img_size": 32, '
    '"num_register_tokens": 4}',
])
def test_training_forward_is_the_cls_token(arch: str) -> None:
    cfg = resolve_config(overrides=[f"model.arch={arch}", "model.patch_size=8", "model.drop_path_rate=0.2",
                                    "head.out_dim=64", "run.device=cpu"])
    student, _, _ = build_student_teacher(cfg)
    backbone = student.backbone.double()
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    torch.manual_seed(1)
    fast = backbone(x)  # train mode: the last block on the CLS row only
    torch.manual_seed(1)
    torch.testing.assert_close(fast, backbone.forward_tokens(x).cls, rtol=1e-12, atol=1e-12)
    backbone.eval()
    assert torch.equal(backbone(x), backbone.forward_tokens(x).cls)  # eval: the same call, bit for bit
