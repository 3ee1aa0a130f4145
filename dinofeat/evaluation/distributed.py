"""Sharding work across torchrun processes and gathering the results on rank 0 in the original order.

Works with one process (no process group: the shard is everything) and with any backend;
with gloo everything stays on the CPU. Errors are raised, never ``sys.exit``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from dinofeat.distributed import init_distributed


def init_from_env() -> bool:
    """Join the torchrun process group if launched by torchrun; True if there is more than one process.

    The same set-up as the trainer's (:func:`dinofeat.distributed.init_distributed`): NCCL on CUDA, else gloo.
    """
    return init_distributed().distributed


def rank_and_world() -> tuple[int, int]:
    """(rank, world size), (0, 1) without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_indices(total: int, rank: int, world: int) -> list[int]:
    """Items ``rank, rank + world, ...``: every item exactly once over all ranks (no padding duplicates)."""
    if total < world:
        raise ValueError(f"cannot shard {total} items over {world} processes; use fewer processes")
    return list(range(rank, total, world))


def gather_in_order(local: torch.Tensor, total: int) -> torch.Tensor | None:
    """Gather each rank's shard (made by :func:`shard_indices`) on rank 0, in the original item order.

    Args:
        local: This rank's rows, (len(shard), ...).
        total: Number of items over all ranks.

    Returns:
        The (total, ...) tensor on rank 0 (on the CPU); None on the other ranks.
    """
    rank, world = rank_and_world()
    if world == 1:
        return local.cpu()
    on_gpu = dist.get_backend() == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
    per_rank = -(-total // world)
    padded = torch.zeros((per_rank, *local.shape[1:]), dtype=local.dtype, device=device)
    padded[: local.shape[0]] = local.to(device)
    buffers = [torch.empty_like(padded) for _ in range(world)] if rank == 0 else None
    dist.gather(padded, buffers, dst=0)
    if buffers is None:
        return None
    result = torch.empty((total, *local.shape[1:]), dtype=local.dtype)
    for source, buffer in enumerate(buffers):
        count = len(range(source, total, world))
        result[source::world] = buffer[:count].cpu()
    return result
