"""Training throughput and peak memory of dinofeat-train on a fixed configuration.

Config (fixed, comparable with the official implementation's 5.1 images/s = 3.1 s/iteration
on 2 CPU cores): ViT-Tiny/16 (192 wide, 12 blocks, 3 heads), DINO head with 4096 outputs
(hidden 2048, bottleneck 256), batch 16, 2 global crops at 224 + 2 local crops at 96, fp32,
one data-loading worker, 512 generated 256x256 JPEG images.

Usage:
    python bench/bench_train.py --iters 10
Prints images/s (median over iterations after the first) and peak RSS, plus the ceiling that the machine's
own matrix-multiply speed puts on this config: the arithmetic of one iteration (counted by torch's
FlopCounterMode, attention included) divided by the best sgemm rate measured in the same process.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from dinofeat.training.config import TrainConfig, resolve_config
from dinofeat.training.step import DinoStep, Schedules, build_student_teacher
from dinofeat.training.trainer import Trainer
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

OFFICIAL_IMAGES_PER_S = 5.1
CONFIG = [
    "model.arch=vit_tiny", "model.patch_size=16", "model.drop_path_rate=0.1",
    "head.out_dim=4096", "optim.batch_size_per_gpu=16", "crops.local_crops_number=2",
    "run.precision=fp32", "run.device=cpu", "data.num_workers=1", "run.epochs=1", "optim.warmup_epochs=0",
]


def flops_per_iteration(cfg: TrainConfig) -> float:
    """FLOPs of one training iteration of ``cfg`` on synthetic crops (forward, backward, optimiser).

    Attention runs unfused for the count so that its matrix products are seen by the counter.
    """
    student, teacher, _ = build_student_teacher(cfg)
    for module in [*student.modules(), *teacher.modules()]:
        if hasattr(module, "fused_attn"):
            module.fused_attn = False
    step = DinoStep(cfg, student, teacher, Schedules.from_config(cfg, 1, 1), torch.device("cpu"))
    b, c = cfg.optim.batch_size_per_gpu, cfg.crops
    crops = [torch.randn(b, 3, c.global_size, c.global_size) for _ in range(2)]
    crops += [torch.randn(b, 3, c.local_size, c.local_size) for _ in range(c.local_crops_number)]
    with FlopCounterMode(display=False) as counter:
        step(crops, 0, 0)
    return float(counter.get_total_flops())


def sgemm_flops_per_s(repeats: int = 5) -> float:
    """Best fp32 matrix-multiply rate over the shapes this config's linear layers use."""
    best = 0.0
    for m, k, n in [(6304, 192, 576), (6304, 192, 768), (6304, 768, 192), (2048, 2048, 2048)]:
        a, b = torch.randn(m, k), torch.randn(k, n)
        a @ b
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = max(best, 2 * m * k * n * repeats / (time.perf_counter() - start))
    return best


def make_images(root: Path, n: int = 512, size: int = 256) -> None:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        # Smooth random fields compress like photos rather than like noise.
        small = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)
        image.save(root / f"{i:04d}.jpg", quality=90)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=8, help="iterations to time (the first is dropped)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        images, out = Path(tmp) / "images", Path(tmp) / "run"
        make_images(images)
        cfg = resolve_config(overrides=[
            *CONFIG, f"run.max_iters_per_epoch={args.iters}", "run.log_every=1",
            f"data.path={images}", f"run.output_dir={out}", "run.saveckp_freq=0",
        ])
        trainer = Trainer(cfg)
        start = time.perf_counter()
        trainer.train_one_epoch(0)
        wall = time.perf_counter() - start
        records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        times = [r["iter_time"] for r in records if "iter_time" in r][1:]
        data_times = [r["data_time"] for r in records if "data_time" in r][1:]
        del trainer  # stop the loader's worker before its images are deleted
    # Peak memory is read before the FLOP count builds a second model.
    rss_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rss_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    flops, peak = flops_per_iteration(cfg), sgemm_flops_per_s()
    ceiling = cfg.optim.batch_size_per_gpu * peak / flops
    median = statistics.median(times)
    ips = cfg.optim.batch_size_per_gpu / median
    result = {
        "torch_threads": torch.get_num_threads(), "iterations_timed": len(times),
        "median_s_per_iter": round(median, 3),
        "median_data_wait_s": round(statistics.median(data_times), 3), "images_per_s": round(ips, 2),
        "vs_official_5.1": round(ips / OFFICIAL_IMAGES_PER_S, 2), "wall_s": round(wall, 1),
        "peak_rss_main_MiB": round(rss_self), "peak_rss_worker_MiB": round(rss_children),
        "gflop_per_iter": round(flops / 1e9, 1), "sgemm_gflop_per_s": round(peak / 1e9, 1),
        "ceiling_images_per_s": round(ceiling, 2),
        "ceiling_vs_official_5.1": round(ceiling / OFFICIAL_IMAGES_PER_S, 2),
        "all_iter_times": [round(t, 3) for t in times],
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
