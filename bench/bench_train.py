"""Training throughput and peak memory of dinofeat-train on a fixed configuration.

Config (fixed, comparable with the official implementation's 5.1 images/s = 3.1 s/iteration
on 2 CPU cores): ViT-Tiny/16 (192 wide, 12 blocks, 3 heads), DINO head with 4096 outputs
(hidden 2048, bottleneck 256), batch 16, 2 global crops at 224 + 2 local crops at 96, fp32,
one data-loading worker, 512 generated 256x256 JPEG images.

Usage:
    nice -n 10 python bench/bench_train.py --iters 8
Prints images/s (median over iterations after the first) and peak RSS.
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
from dinofeat.training.config import resolve_config
from dinofeat.training.trainer import Trainer
from PIL import Image

OFFICIAL_IMAGES_PER_S = 5.1


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
            "model.arch=vit_tiny", "model.patch_size=16", "model.drop_path_rate=0.1",
            "head.out_dim=4096", "optim.batch_size_per_gpu=16", "crops.local_crops_number=2",
            "run.precision=fp32", "run.device=cpu", "data.num_workers=1", "run.epochs=1",
            "optim.warmup_epochs=0", f"run.max_iters_per_epoch={args.iters}", "run.log_every=1",
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
    median = statistics.median(times)
    ips = cfg.optim.batch_size_per_gpu / median
    rss_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rss_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    result = {
        "torch_threads": torch.get_num_threads(), "iterations_timed": len(times),
        "median_s_per_iter": round(median, 3),
        "median_data_wait_s": round(statistics.median(data_times), 3), "images_per_s": round(ips, 2),
        "vs_official_5.1": round(ips / OFFICIAL_IMAGES_PER_S, 2), "wall_s": round(wall, 1),
        "peak_rss_main_MiB": round(rss_self), "peak_rss_worker_MiB": round(rss_children),
        "all_iter_times": [round(t, 3) for t in times],
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
