"""Run under torchrun (2 gloo ranks): one DDP step and one FSDP step from the same start, then one more step
of each after resuming from their checkpoints (FSDP: sharded); rank 0 writes the largest differences as JSON.

Usage: torchrun --nproc_per_node 2 tests/helpers/fsdp_worker.py IMAGES OUTPUT_DIR RESULT_JSON [OBJECTIVE]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch.distributed.tensor import DTensor

from dinofeat.training.config.train_config import resolve_config
from dinofeat.training.engine.trainer import Trainer
from dinofeat.utils.distributed import shutdown
from tests.helpers.training import TINY_TRAIN_OVERRIDES

# SGD: the update is linear in the gradient, so only float summation order separates the two (AdamW's first
# step turns rounding noise in gradients that are 0 in theory into lr-sized steps, see test_torchrun.py).
SETTINGS = ["optim.optimizer=sgd", "optim.warmup_epochs=0", "optim.batch_size_per_gpu=2",
            "run.max_iters_per_epoch=1", "model.drop_path_rate=0.1",
            'model.arch={"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 32}']


def trainer(images: Path, out: Path, strategy: str, epochs: int, objective: str) -> Trainer:
    run = [f"data.path={images}", f"run.output_dir={out}", f"run.strategy={strategy}", f"run.epochs={epochs}",
           f"objective.name={objective}"]
    cfg = resolve_config(overrides=[*TINY_TRAIN_OVERRIDES, *SETTINGS, *run])
    return Trainer(cfg)


def full(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().clone()
            for k, v in module.state_dict().items()}


def largest_difference(ddp: Trainer, fsdp: Trainer) -> dict[str, float]:
    result = {}
    for name in ("student_module", "teacher"):
        a, b = full(getattr(ddp, name)), full(getattr(fsdp, name))
        assert a.keys() == b.keys()
        result[name] = max((a[k] - b[k]).abs().max().item() for k in a)
    centres, other = ddp.step.loss_fn.state_dict(), fsdp.step.loss_fn.state_dict()
    result["center"] = max((centres[k] - other[k]).abs().max().item() for k in centres)
    return result


def main(images: Path, out: Path, result_file: Path, objective: str) -> None:
    report = {}
    for epochs in (1, 2):  # epochs=2 resumes both runs from their epoch-1 checkpoints
        ddp = trainer(images, out / "ddp", "ddp", epochs, objective)
        fsdp = trainer(images, out / "fsdp", "fsdp", epochs, objective)
        assert ddp.start_epoch == fsdp.start_epoch == epochs - 1
        before = full(fsdp.student_module)
        ddp.fit()
        fsdp.fit()
        after = full(fsdp.student_module)
        step = max((after[k] - before[k]).abs().max().item() for k in after)
        report[f"epoch_{epochs}"] = {**largest_difference(ddp, fsdp), "fsdp_step_size": step}
    if torch.distributed.get_rank() == 0:
        result_file.write_text(json.dumps(report))


if __name__ == "__main__":
    try:
        main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]),
             sys.argv[4] if len(sys.argv) > 4 else "dino")
    finally:
        shutdown()
