"""A rank of the two-process distributed KoLeo test: gathers over gloo, writes its losses and gradients."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from dinofeat.training.objectives.dinov3.koleo import koleo_loss_distributed

#: (topk, group size) cases of the test; None: the whole global batch.
CASES = ((1, None), (3, None), (2, 4), (1, 8))


def rows(world: int, local: int, dim: int = 16) -> torch.Tensor:
    """The global batch every rank slices its rows from."""
    return torch.randn(world * local, dim, generator=torch.Generator().manual_seed(7))


def run_rank(rank: int, world: int, store: str, out: str, local: int) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        results = {}
        for topk, group in CASES:
            x = rows(world, local)[rank * local:(rank + 1) * local].clone().requires_grad_()
            loss = koleo_loss_distributed(x, topk=topk, group_size=group)
            loss.backward()
            results[f"topk{topk}.group{group}.loss"] = loss.detach()
            results[f"topk{topk}.group{group}.grad"] = x.grad
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    rank_, world_, store_, out_, local_ = sys.argv[1:]
    run_rank(int(rank_), int(world_), store_, out_, int(local_))
