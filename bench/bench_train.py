"""Training throughput and peak memory of dinofeat-train on a fixed configuration.

Config (fixed, the same as the official runner's, ../shared/reference/official-dino/
bench_official_train.py): ViT-Tiny/16 (192 wide, 12 blocks, 3 heads), DINO head with 4096 outputs
(hidden 2048, bottleneck 256), batch 16, 2 global crops at 224 + 2 local crops at 96, fp32,
one data-loading worker, 512 generated 256x256 JPEG images.

Usage:
    python bench/bench_train.py --iters 10
    python bench/bench_train.py --iters 10 --prefetched
    python bench/bench_train.py --iters 10 --side-by-side 3
    python bench/bench_train.py --iters 40 --images DIR --set run.device=cuda ...   (another config)
The first prints images/s (median over iterations after the first) and peak RSS, plus the ceiling that the
machine's own matrix-multiply speed puts on this config: the arithmetic of one iteration (counted by torch's
FlopCounterMode, attention included) divided by the best sgemm rate measured in the same process.
The second alternates ROUNDS runs of the official training loop (../shared/reference/official-dino/
bench_official_train.py, as a subprocess) with ROUNDS runs of this benchmark (also a subprocess, without the
ceiling), and reports both medians, the ratio of median images/s and of median peak RSS of the main process;
each round also runs this benchmark with ``--prefetched`` (the batches made before timing, so no loader
worker competes with the step for the cores): its ratio to the official run is what a data path of no
cost would give.
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from timing import side_by_side_summary
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from dinofeat.training.config.train_config import TrainConfig, resolve_config
from dinofeat.training.data import hue
from dinofeat.training.data.images import collate_crops
from dinofeat.training.engine.metrics import read_metrics
from dinofeat.training.engine.step import DinoStep, Schedules, build_student_teacher
from dinofeat.training.engine.trainer import Trainer

OFFICIAL_RUNNER = Path(__file__).resolve().parents[2] / "shared" / "reference" / "official-dino" / \
    "bench_official_train.py"
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


def _run_json(command: list[str]) -> dict[str, Any]:
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout[done.stdout.index("{"):])
    return result


def side_by_side(rounds: int, iters: int) -> dict[str, Any]:
    """Alternate the official loop and this benchmark, ``rounds`` runs each, in fresh processes."""
    if not OFFICIAL_RUNNER.is_file():
        raise SystemExit(f"needs {OFFICIAL_RUNNER} (the read-only ../shared folder beside the project root)")
    official, ours, prefetched = [], [], []
    for _ in range(rounds):
        official.append(_run_json([sys.executable, str(OFFICIAL_RUNNER), str(iters)]))
        ours.append(_run_json([sys.executable, __file__, "--iters", str(iters), "--no-ceiling"]))
        prefetched.append(_run_json([sys.executable, __file__, "--iters", str(iters), "--no-ceiling",
                                     "--prefetched"]))
    official_ips = statistics.median(r["official_images_per_s"] for r in official)
    return {
        "iterations_per_run": iters, **side_by_side_summary(official, ours, "peak_rss_main_MiB"),
        # The same trainer without its loader worker running: the most that a free data path could give.
        "dinofeat_prefetched_images_per_s": [r["images_per_s"] for r in prefetched],
        "ratio_prefetched_to_official": round(
            statistics.median(r["images_per_s"] for r in prefetched) / official_ips, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=8, help="iterations to time (the first is dropped)")
    parser.add_argument("--side-by-side", type=int, metavar="ROUNDS", default=0,
                        help="alternate ROUNDS runs of the official loop and of this benchmark")
    parser.add_argument("--no-ceiling", action="store_true", help="skip the FLOP count and sgemm ceiling")
    parser.add_argument("--prefetched", action="store_true",
                        help="make the batches before timing (what the step costs without the data path)")
    parser.add_argument("--images", type=Path, metavar="DIR",
                        help="train on this image folder instead of the 512 generated JPEGs")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override on top of the fixed config (for A/B runs)")
    args = parser.parse_args()
    if args.side_by_side:
        print(json.dumps(side_by_side(args.side_by_side, args.iters), indent=2))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        images, out = args.images or Path(tmp) / "images", Path(tmp) / "run"
        if args.images is None:
            make_images(images)
        cfg = resolve_config(overrides=[
            *CONFIG, f"run.max_iters_per_epoch={args.iters}", "run.log_every=1",
            f"data.path={images}", f"run.output_dir={out}", "run.saveckp_freq=0", *args.set,
        ])
        # A run longer than a few dozen iterations builds the exact hue tables at its start (Trainer:
        # hue.expect_pixels); this samples such a run's iterations, so it builds them too, before timing.
        hue.build_tables()
        trainer = Trainer(cfg)
        if args.prefetched:  # the batches made first, in this process: no loader worker runs while timing
            loader = DataLoader(trainer.dataset, batch_size=cfg.optim.batch_size_per_gpu,
                                sampler=trainer.sampler, drop_last=True, collate_fn=collate_crops)
            trainer.sampler.set_epoch(0)
            trainer.loader = list(itertools.islice(loader, args.iters))  # type: ignore[assignment]
        start = time.perf_counter()
        trainer.train_one_epoch(0)
        wall = time.perf_counter() - start
        records = read_metrics(out)
        times = [r["iter_time"] for r in records if "iter_time" in r][1:]
        data_times = [r["data_time"] for r in records if "data_time" in r][1:]
        del trainer  # stop the loader's worker before its images are deleted
    # Peak memory is read before the FLOP count builds a second model.
    rss_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    rss_children = children.ru_maxrss / 1024
    worker_cpu_s = children.ru_utime + children.ru_stime  # the loader worker, from its start to its exit
    median = statistics.median(times)
    ips = cfg.optim.batch_size_per_gpu / median
    result: dict[str, Any] = {
        "torch_threads": torch.get_num_threads(), "iterations_timed": len(times),
        "median_s_per_iter": round(median, 3),
        "median_data_wait_s": round(statistics.median(data_times), 3), "images_per_s": round(ips, 2),
        "wall_s": round(wall, 1),
        "peak_rss_main_MiB": round(rss_self), "peak_rss_worker_MiB": round(rss_children),
        "worker_cpu_s": round(worker_cpu_s, 2),
        "all_iter_times": [round(t, 3) for t in times],
    }
    if not args.no_ceiling:
        flops, peak = flops_per_iteration(cfg), sgemm_flops_per_s()
        ceiling = cfg.optim.batch_size_per_gpu * peak / flops
        result.update({
            "gflop_per_iter": round(flops / 1e9, 1), "sgemm_gflop_per_s": round(peak / 1e9, 1),
            "ceiling_images_per_s": round(ceiling, 2),
        })
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
