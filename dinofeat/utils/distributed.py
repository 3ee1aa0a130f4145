"""Process groups: joining one (single process, torchrun env://, multi-node), sharding work over its
ranks and gathering the results on rank 0 in the original order.

Works with one process (no process group: the shard is everything) and with any backend; with gloo
everything stays on the CPU. Helpers raise on bad setups; they never exit the interpreter and never
patch ``print``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from dinofeat.utils.devices import require_device
from dinofeat.utils.errors import SetupError


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: rank, world size, and the device it trains on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(preference: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto``: CUDA (this process's local GPU) when available, else CPU; or an explicit device."""
    if preference == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    device = require_device(preference)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def init_distributed(device_preference: str = "auto") -> DistInfo:
    """Join the process group described by torchrun's environment, or run as a single process.

    torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT (also across nodes).
    The backend is NCCL on CUDA and gloo on CPU. Without those variables: one process, no group.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistInfo(device=pick_device(device_preference))
    try:
        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError as error:
        raise SetupError(f"malformed torchrun environment (RANK/WORLD_SIZE/LOCAL_RANK): {error}") from None
    device = pick_device(device_preference, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    """Leave the process group if one is active."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def init_from_env() -> bool:
    """Join the torchrun process group if launched by torchrun; True if there is more than one process.

    The same set-up as the trainer's (:func:`init_distributed`): NCCL on CUDA, else gloo.
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
