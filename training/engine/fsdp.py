"""``run.strategy=fsdp``: the student and teacher sharded with PyTorch's FSDP2 (``fully_shard``), and sharded
checkpoints.

Student and teacher are sharded alike (each transformer block, then the whole wrapper), so the EMA update
works on matching local shards and never gathers a full parameter. Gradients are averaged over ranks by FSDP's
reduce-scatter, the same mean DDP computes, so one FSDP step equals the DDP step up to float summation order.

Sharded checkpoint: every rank writes its own shards (parameters, optimiser moments) to
``checkpoint.shards/<iteration>/rank<r>-of-<w>.pth``; then rank 0 writes ``checkpoint.pth`` itself, which
holds everything small (position, centre, RNG, config) and names that folder, so the small file is the commit
point: a run killed while shards are written still resumes from the previous complete set. Older folders are
deleted once no ``checkpoint*.pth`` names them. Resuming needs the same number of processes (each reads its
own file). The optimiser state is saved exactly as the optimiser holds it, so parameters that have no state
yet (the last layer while it is frozen) have none after a resume either. :func:`full_state` joins the shards
into ordinary full tensors (``dinofeat-train export`` uses it; no process group needed).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from dinofeat.training.engine.checkpoint import atomic_save, load_checkpoint

SHARDS_FOLDER = "checkpoint.shards"


def build_mesh(world_size: int, device: torch.device) -> DeviceMesh:
    """A one-dimensional mesh over all ranks (NCCL on CUDA, gloo on CPU)."""
    return init_device_mesh(device.type, (world_size,))


def shard_model(model: nn.Module, mesh: DeviceMesh) -> None:
    """``fully_shard`` every block of ``model.backbone`` (if it has ``blocks``), then ``model`` itself.

    Every module, the root too, goes back to its shards after the forward: the teacher has no backward that
    would do it, and the EMA update needs sharded parameters on both sides.
    """
    backbone = getattr(model, "backbone", None)
    for block in getattr(backbone, "blocks", []):
        fully_shard(block, mesh=mesh, reshard_after_forward=True)
    fully_shard(model, mesh=mesh, reshard_after_forward=True)


def _local(value: Any) -> Any:
    return value.to_local() if isinstance(value, DTensor) else value


def _module_shard(module: nn.Module) -> dict[str, Any]:
    state = module.state_dict()
    return {"tensors": {k: _local(v) for k, v in state.items()},
            "sharded": [k for k, v in state.items() if isinstance(v, DTensor)]}


def local_shards(student: nn.Module, teacher: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """This rank's part of the weights and optimiser state, as plain tensors."""
    optim = optimizer.state_dict()
    slots = {index: {k: _local(v) for k, v in entry.items()} for index, entry in optim["state"].items()}
    sharded = {index: [k for k, v in entry.items() if isinstance(v, DTensor)]
               for index, entry in optim["state"].items()}
    return {"student": _module_shard(student), "teacher": _module_shard(teacher),
            "optimizer": {"state": slots, "param_groups": optim["param_groups"], "sharded": sharded}}


@torch.no_grad()
def _load_module_shard(module: nn.Module, shard: dict[str, Any], origin: str) -> None:
    current = module.state_dict()
    tensors = shard["tensors"]
    if current.keys() != tensors.keys():
        missing, unexpected = sorted(current.keys() - tensors.keys()), sorted(tensors.keys() - current.keys())
        raise ValueError(f"{origin}: keys differ (missing {missing[:5]}, unexpected {unexpected[:5]})")
    for key, target in current.items():
        local = _local(target)
        if local.shape != tensors[key].shape:
            raise ValueError(f"{origin}: {key} has shard shape {tuple(tensors[key].shape)} in the file, "
                             f"{tuple(local.shape)} here")
        local.copy_(tensors[key])


def load_local_shards(shards: dict[str, Any], student: nn.Module, teacher: nn.Module,
                      optimizer: torch.optim.Optimizer, origin: str) -> None:
    """Inverse of :func:`local_shards` on the same number of ranks."""
    _load_module_shard(student, shards["student"], f"{origin} (student)")
    _load_module_shard(teacher, shards["teacher"], f"{origin} (teacher)")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    saved = shards["optimizer"]
    state = {}
    for index, entry in saved["state"].items():
        param = params[index]
        state[index] = {
            k: DTensor.from_local(v, param.device_mesh, param.placements, shape=param.shape,
                                  stride=param.stride()) if k in saved["sharded"][index] else v
            for k, v in entry.items()
        }
    optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})


def save_shards(output_dir: Path, iteration: int, rank: int, world_size: int,
                shards: dict[str, Any]) -> str:
    """Write this rank's shards; returns their folder, relative to ``output_dir`` (for ``checkpoint.pth``)."""
    folder = f"{SHARDS_FOLDER}/{iteration:09d}"
    (output_dir / folder).mkdir(parents=True, exist_ok=True)
    atomic_save(shards, output_dir / folder / f"rank{rank:05d}-of-{world_size:05d}.pth")
    return folder


def read_shards(output_dir: Path, folder: str, rank: int, world_size: int, origin: str) -> dict[str, Any]:
    path = output_dir / folder / f"rank{rank:05d}-of-{world_size:05d}.pth"
    if not path.is_file():
        found = sorted(p.name for p in (output_dir / folder).glob("rank*.pth"))
        raise ValueError(f"{origin} is a sharded (run.strategy=fsdp) checkpoint without {path.name}; it "
                         f"resumes only on the number of processes that wrote it (files there: {found})")
    return load_checkpoint(path)


def remove_unreferenced_shards(output_dir: Path) -> None:
    """Delete shard folders that no ``checkpoint*.pth`` in ``output_dir`` names (rank 0, after a save)."""
    root = output_dir / SHARDS_FOLDER
    if not root.is_dir():
        return
    kept = {load_checkpoint(p).get("shards") for p in output_dir.glob("checkpoint*.pth")}
    for folder in root.iterdir():
        if f"{SHARDS_FOLDER}/{folder.name}" not in kept:
            shutil.rmtree(folder, ignore_errors=True)


def full_state(checkpoint: Path, ckpt: dict[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
    """``{"student": ..., "teacher": ...}`` full tensors joined from a sharded checkpoint's rank files
    (FSDP2 splits every sharded tensor along dim 0 like ``torch.chunk``, ranks in order)."""
    files = sorted((checkpoint.parent / ckpt["shards"]).glob("rank*.pth"))
    if len(files) != ckpt["world_size"]:
        raise ValueError(f"{checkpoint} names {ckpt['world_size']} shard files in {ckpt['shards']}, "
                         f"found {len(files)}")
    parts = [load_checkpoint(f) for f in files]
    full: dict[str, dict[str, torch.Tensor]] = {}
    for module in ("student", "teacher"):
        sharded = set(parts[0][module]["sharded"])
        first = parts[0][module]["tensors"]
        full[module] = {key: torch.cat([p[module]["tensors"][key] for p in parts]) if key in sharded
                        else value for key, value in first.items()}
    return full
