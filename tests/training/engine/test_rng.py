"""The step's random stream: a function of (seed, iteration, rank), isolated from the global generator."""

from __future__ import annotations

import torch

from dinofeat.training.engine.rng import iteration_rng, loader_generator

CPU = torch.device("cpu")


def test_iteration_rng_depends_on_the_position_only_and_restores_the_global_state() -> None:
    torch.manual_seed(1)
    before = torch.get_rng_state()
    with iteration_rng(0, 7, 0, CPU):
        first = torch.rand(4)
    assert torch.equal(torch.get_rng_state(), before)
    torch.rand(100)  # whatever else happened to the global stream meanwhile
    with iteration_rng(0, 7, 0, CPU):
        again = torch.rand(4)
    with iteration_rng(0, 7, 1, CPU):
        other_rank = torch.rand(4)
    with iteration_rng(0, 8, 0, CPU):
        next_iteration = torch.rand(4)
    assert torch.equal(first, again)
    assert not torch.equal(first, other_rank) and not torch.equal(first, next_iteration)


def test_a_loader_with_its_own_generator_leaves_the_global_stream_alone() -> None:
    loader = torch.utils.data.DataLoader(list(range(4)), batch_size=2, generator=loader_generator(0))
    before = torch.get_rng_state()
    assert [b.tolist() for b in loader] == [[0, 1], [2, 3]]
    assert torch.equal(torch.get_rng_state(), before)
