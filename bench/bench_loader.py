"""The training data path alone, in images/s per CPU core: the official PIL multi-crop versus the
GPU data path (workers decode and draw parameters; the crops are made batched on the device).

What limits a GPU run is the work left on the CPU workers, so that is measured per core (one
process, no DataLoader workers) for both paths. The device stage is timed too, on whatever device
is given (on a CPU-only machine it runs on the CPU, which says nothing about a GPU's rate).

Usage:
    python bench/bench_loader.py [--images DIR] [--n 128] [--device cpu|cuda]
Without --images it uses ../shared/data/imagenette2/train (first --n files, 224 px) or, when absent
or with --generated, generated 500x375 JPEGs (ImageNet's typical size).
Official crop settings: 2 global crops at 224, 10 local at 96.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from dinofeat.training.augment import MultiCropAugmentation
from dinofeat.training.data import load_rgb, sample_seed
from dinofeat.training.device_augment import DeviceMultiCrop, MultiCropParams, PendingCrops, crop_kinds
from PIL import Image

from dinofeat.inputs import list_image_files

IMAGENETTE = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenette2" / "train"
GLOBAL, LOCAL, N_LOCAL = 224, 96, 10


def _images(folder: str | None, n: int, scratch: Path, generated: bool) -> list[Path]:
    if folder is None and IMAGENETTE.is_dir() and not generated:
        folder = str(IMAGENETTE)
    if folder is not None:
        return list_image_files(folder)[:n]
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = scratch / f"{i:04d}.jpg"
        Image.fromarray(rng.integers(0, 255, (375, 500, 3), dtype=np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def _per_image(paths: list[Path], transform) -> tuple[float, list]:  # type: ignore[no-untyped-def]
    outputs = []
    start = time.perf_counter()
    for index, path in enumerate(paths):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(0, 0, index))
            outputs.append(transform(load_rgb(path)))
    return len(paths) / (time.perf_counter() - start), outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images")
    parser.add_argument("--generated", action="store_true",
                        help="generated 500x375 JPEGs, even with ../shared")
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as scratch:
        paths = _images(args.images, args.n, Path(scratch), args.generated)
        kinds = crop_kinds(GLOBAL, LOCAL, (0.4, 1.0), (0.05, 0.4), N_LOCAL)
        pil_rate, _ = _per_image(paths, MultiCropAugmentation(GLOBAL, LOCAL, local_crops_number=N_LOCAL))
        params_rate, samples = _per_image(paths, MultiCropParams(kinds))
    device = torch.device(args.device)
    stage = DeviceMultiCrop(kinds, device)
    batches = [samples[i:i + args.batch] for i in range(0, len(samples), args.batch)]
    stage(PendingCrops([s[0] for s in batches[0]], torch.stack([s[1] for s in batches[0]])))  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for batch in batches:
        crops = stage(PendingCrops([s[0] for s in batch], torch.stack([s[1] for s in batch])))
    if device.type == "cuda":
        torch.cuda.synchronize()
    device_rate = len(samples) / (time.perf_counter() - start)
    assert len(crops) == 2 + N_LOCAL
    print(json.dumps({
        "images": len(paths), "crops": f"2x{GLOBAL} + {N_LOCAL}x{LOCAL}",
        "cpu_path_images_per_s_per_core": round(pil_rate, 2),
        "device_path_worker_images_per_s_per_core": round(params_rate, 2),
        "worker_speedup": round(params_rate / pil_rate, 2),
        f"device_stage_images_per_s_on_{device.type}": round(device_rate, 2),
    }, indent=2))


if __name__ == "__main__":
    main()
