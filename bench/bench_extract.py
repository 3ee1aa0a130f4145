"""Whole-extraction throughput (decode, preprocess, forward, write Parquet shards) vs the bare forward.

Generates a folder of small JPEGs (or reuses --folder), then runs the shard extraction
(``dinofeat.features.stores.shards``) on it with
several numbers of DataLoader workers (the default, ``default_num_workers()``, among them), each in a
fresh output folder, and times the bare forward pass of the same model on already-preprocessed
batches of the same size. The gap between the two is the data-loading and writing overhead. The
configurations run in interleaved rounds and the medians are reported.

Usage: nice -n 10 python bench/bench_extract.py [--images 20000] [--workers 0 1 2 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import dinofeat
from dinofeat.data.collections import plan_units
from dinofeat.features.loop import default_num_workers
from dinofeat.features.stores.shards import ExtractionSettings, extract_to_shards, read_shards
from dinofeat.registry import BUNDLED_MODEL


def make_jpegs(folder: Path, count: int, side: int = 128) -> None:
    """``count`` random-texture JPEGs of ``side`` px (quality 90), ~5-10 kB each."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        coarse = rng.integers(0, 256, (side // 8, side // 8, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((side, side), Image.Resampling.BILINEAR)
        image.save(folder / f"{index:06d}.jpg", quality=90)


def time_extraction(model: dinofeat.FeatureExtractor, folder: Path, workers: int, batch_size: int,
                    shard_size: int) -> float:
    """Images/s of a complete extraction into a fresh folder (removed afterwards)."""
    output = Path(tempfile.mkdtemp(prefix="bench-shards-"))
    try:
        units = plan_units([folder], shard_size)
        start = time.perf_counter()
        report = extract_to_shards(model, units, output, ExtractionSettings(BUNDLED_MODEL),
                                   batch_size=batch_size, num_workers=workers, progress=False)
        seconds = time.perf_counter() - start
        assert report.complete and len(read_shards(output)) == report.images
        return report.images / seconds
    finally:
        shutil.rmtree(output)


@torch.inference_mode()
def time_forward(model: dinofeat.FeatureExtractor, images: int, batch_size: int) -> float:
    """Images/s of the forward pass alone on preprocessed batches of the model's crop size."""
    crop = model.preprocess.crop
    batch = torch.randn(batch_size, 3, crop, crop)
    model(batch)  # warm-up
    batches = -(-images // batch_size)
    start = time.perf_counter()
    for _ in range(batches):
        model(batch)
    return batches * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--folder", type=Path, help="reuse a folder of images instead of generating one")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2, 4])
    parser.add_argument("--model", default=BUNDLED_MODEL)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repeats (medians reported)")
    args = parser.parse_args()
    model = dinofeat.load(args.model, device="cpu")
    scratch = None
    folder = args.folder
    if folder is None:
        scratch = Path(tempfile.mkdtemp(prefix="bench-jpegs-"))
        folder = scratch / "images"
        start = time.perf_counter()
        make_jpegs(folder, args.images)
        print(f"generated {args.images} JPEGs in {time.perf_counter() - start:.0f} s", flush=True)
    try:
        default = default_num_workers()
        configs = sorted(set(args.workers) | {default})
        # Interleaved rounds (every configuration and the bare forward once per round), medians
        # reported: on a shared machine the load drifts between configurations run one after another.
        rates: dict[int, list[float]] = {workers: [] for workers in configs}
        forwards: list[float] = []
        for round_number in range(args.rounds):
            for workers in configs:
                rate = time_extraction(model, folder, workers, args.batch_size, args.shard_size)
                rates[workers].append(rate)
            forwards.append(time_forward(model, min(args.images, 5_000), args.batch_size))
            measured = ", ".join(f"{w} workers {rates[w][-1]:.1f}" for w in configs)
            print(f"round {round_number + 1}: {measured}, forward {forwards[-1]:.1f} images/s", flush=True)
        median = {workers: statistics.median(values) for workers, values in rates.items()}
        forward = statistics.median(forwards)
        best = max(median, key=lambda w: median[w])
        result = {"model": args.model, "images": len(list(folder.iterdir())), "cpus": os.cpu_count(),
                  "torch_threads": torch.get_num_threads(), "batch_size": args.batch_size,
                  "default_workers": default, "rates": rates, "forward": forwards, "best_workers": best}
        print(json.dumps(result))
        for workers in configs:
            label = " (default)" if workers == default else ""
            print(f"| whole extraction, {workers} workers{label} | {median[workers]:.1f} | "
                  f"{median[workers] / forward:.2f}x |")
        print(f"| bare forward (preprocessed batches) | {forward:.1f} | 1.00x |")
    finally:
        if scratch is not None:
            shutil.rmtree(scratch)


if __name__ == "__main__":
    main()
