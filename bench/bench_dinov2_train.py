"""Speed and peak memory of the DINOv2 training step beside the official DINOv2 loop, on the official runner's
benchmark config (../shared/reference/official-dinov2/README.md, "The benchmark config").

Config (fixed, the runner's): ViT-Tiny/16 (192 wide, 12 blocks, 3 heads, layer scale 1e-5, no registers, 14
x 14 position grid), drop-path 0.1 in every block (student), DINO head and separate iBOT head of 4096
prototypes (hidden 2048, bottleneck 256), Sinkhorn-Knopp targets, KoLeo 0.1, iBOT masks (probability 0.5,
ratios 0.1-0.5), batch 16, 2 global crops at 224 + 8 local crops at 96, AdamW, layer-wise lr decay 0.9,
patch-embedding lr x 0.2, clipping 3.0 per sub-module, last layers frozen in the first epoch of 1250
iterations, fp32, seed 0. Data: 16 random N(0, 1) samples already at crop size, made once; every iteration
stacks them into the crop batches (the official runner's collate does the same) and the step draws the
iteration's iBOT masks.

Usage:
    python bench/bench_dinov2_train.py --iters 10                    (this implementation, one process)
    python bench/bench_dinov2_train.py --iters 10 --side-by-side 3   (alternating fresh processes)
The first prints images/s (16 / median seconds per timed iteration; the first 2 iterations are warm-up, as
the official runner's) and the peak RSS. The second alternates ROUNDS runs of the official runner (as a
subprocess, its default random-crop mode) with ROUNDS runs of this one, and reports both medians and the
ratios of median images/s and of median peak RSS.
Target: >= 1.2x the official images/s at no more peak memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from timing import side_by_side_summary

from dinofeat.training.config.train_config import TrainConfig, resolve_config
from dinofeat.training.engine.dinov2_step import DinoV2Step, build_dinov2_networks, dinov2_schedules

OFFICIAL_RUNNER = (Path(__file__).resolve().parents[2] / "shared" / "reference" / "official-dinov2"
                   / "bench_official_dinov2_train.py")
WARMUP = 2
OFFICIAL_EPOCH_LENGTH = 1250
CONFIG = [
    'model.arch={"patch_size": 16, "embed_dim": 192, "depth": 12, "num_heads": 3, "img_size": 224, '
    '"layer_scale_init": 1e-5}',
    "model.drop_path_rate=0.1", "model.drop_path_uniform=true",
    "objective.name=dinov2", "objective.centering=sinkhorn_knopp", "objective.koleo_weight=0.1",
    "objective.ibot_separate_head=true", "objective.ibot_out_dim=4096",
    "head.out_dim=4096", "head.hidden_dim=2048", "head.bottleneck_dim=256", "head.norm_last_layer=false",
    "loss.warmup_teacher_temp=0.04", "loss.teacher_temp=0.07", "loss.warmup_teacher_temp_epochs=30",
    "optim.lr=0.004", "optim.min_lr=1e-6", "optim.warmup_epochs=10", "optim.weight_decay=0.04",
    "optim.weight_decay_end=0.4", "optim.momentum_teacher=0.992", "optim.clip_grad=3.0",
    "optim.freeze_last_layer=1", "optim.batch_size_per_gpu=16", "optim.layer_decay=0.9",
    "optim.patch_embed_lr_mult=0.2", "crops.global_size=224", "crops.local_size=96",
    "crops.local_crops_number=8", "run.epochs=100", "run.precision=fp32", "run.device=cpu", "run.seed=0",
]


def samples(cfg: TrainConfig) -> list[list[torch.Tensor]]:
    """16 random samples at crop size: per sample 2 global + n local crops."""
    generator = torch.Generator().manual_seed(0)
    c = cfg.crops
    sizes = [c.global_size] * 2 + [c.local_size] * c.local_crops_number
    return [[torch.randn(3, s, s, generator=generator) for s in sizes]
            for _ in range(cfg.optim.batch_size_per_gpu)]


def run_ours(iters: int, extra: list[str]) -> dict[str, Any]:
    cfg = resolve_config(overrides=[*CONFIG, *extra])
    torch.manual_seed(0)
    student, teacher, _ = build_dinov2_networks(cfg)
    student.train()
    teacher.train()
    step = DinoV2Step(cfg, student, teacher, dinov2_schedules(cfg, OFFICIAL_EPOCH_LENGTH, 1),
                      torch.device("cpu"))
    data = samples(cfg)
    times: list[float] = []
    tick = time.perf_counter()
    for it in range(iters):
        crops = [torch.stack([sample[i] for sample in data]) for i in range(len(data[0]))]
        step(crops, it, it // OFFICIAL_EPOCH_LENGTH)
        now = time.perf_counter()
        times.append(now - tick)
        tick = now
    timed = times[WARMUP:]
    median = statistics.median(timed)
    return {"images_per_s": round(cfg.optim.batch_size_per_gpu / median, 3),
            "s_per_iteration_median": median,
            "s_per_iteration": [round(t, 3) for t in times], "torch_threads": torch.get_num_threads(),
            "peak_rss_MiB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def _run_json(command: list[str]) -> dict[str, Any]:
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout[done.stdout.index("{"):])
    return result


def side_by_side(rounds: int, iters: int, threads: int | None) -> dict[str, Any]:
    """Alternate the official loop and this step, ``rounds`` fresh processes each."""
    if not OFFICIAL_RUNNER.is_file():
        raise SystemExit(f"needs {OFFICIAL_RUNNER} (the read-only ../shared folder beside the project root)")
    thread_args = ["--threads", str(threads)] if threads else []
    official, ours = [], []
    for _ in range(rounds):
        official.append(_run_json([sys.executable, str(OFFICIAL_RUNNER), str(iters), *thread_args]))
        ours.append(_run_json([sys.executable, __file__, "--iters", str(iters), *thread_args]))
    return {"iterations_per_run": iters, **side_by_side_summary(official, ours, "peak_rss_MiB")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=10,
                        help=f"iterations in all, the first {WARMUP} untimed")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's default)")
    parser.add_argument("--side-by-side", type=int, metavar="ROUNDS", default=0,
                        help="alternate ROUNDS runs of the official loop and of this benchmark")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override on top of the fixed config (for A/B runs)")
    args = parser.parse_args()
    if args.iters < WARMUP + 1:
        parser.error(f"--iters must be >= {WARMUP + 1}")
    if args.side_by_side:
        print(json.dumps(side_by_side(args.side_by_side, args.iters, args.threads), indent=2))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    print(json.dumps(run_ours(args.iters, args.set), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
