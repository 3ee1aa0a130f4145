"""The training data path alone, in images/s per CPU core: torchvision's PIL multi-crop (the official
pipeline), dinofeat's PIL path (the same pixels: hue by lookup tables, uint8 hand-over) and the GPU
data path (workers decode and draw parameters; the crops are made batched on the device).

What limits a run is the work left on the CPU workers, so that is measured per core (one process,
no DataLoader workers, batches collated as a worker does); the two PIL paths alternate, and their
crops are checked to be equal. The device stage is timed too, on whatever device is given (on a
CPU-only machine it runs on the CPU, which says nothing about a GPU's rate).

Usage:
    python bench/bench_loader.py [--images DIR] [--n 128] [--device cpu|cuda]
Without --images it uses ../shared/data/imagenette2/train (first --n files, 224 px) or, when absent
or with --generated, generated 500x375 JPEGs (ImageNet's typical size).
Official crop settings: 2 global crops at 224, 10 local at 96.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from dinofeat.config.preprocess import IMAGENET_MEAN, IMAGENET_STD
from dinofeat.data.files import list_image_files
from dinofeat.training.data import hue
from dinofeat.training.data.augment import (
    MultiCropAugmentation,
    RandomGaussianBlur,
    RandomSolarize,
    normalize_crops,
)
from dinofeat.training.data.device_augment import DeviceMultiCrop, MultiCropParams, PendingCrops, crop_kinds
from dinofeat.training.data.images import collate_crops, load_rgb, sample_seed

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


def torchvision_multicrop(global_size: int, local_size: int, n_local: int):  # type: ignore[no-untyped-def]
    """The official augmentation from torchvision's transforms alone (ColorJitter, ToTensor, Normalize)."""
    flip_and_color = transforms.Compose([
        transforms.RandomHorizontalFlip(p=0.5),
        transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
        transforms.RandomGrayscale(p=0.2)])
    normalize = transforms.Compose([transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    bicubic = transforms.InterpolationMode.BICUBIC
    global_crop = transforms.RandomResizedCrop(global_size, scale=(0.4, 1.0), interpolation=bicubic)
    local_crop = transforms.RandomResizedCrop(local_size, scale=(0.05, 0.4), interpolation=bicubic)
    first = transforms.Compose([global_crop, flip_and_color, RandomGaussianBlur(1.0), normalize])
    second = transforms.Compose([global_crop, flip_and_color, RandomGaussianBlur(0.1), RandomSolarize(0.2),
                                 normalize])
    local = transforms.Compose([local_crop, flip_and_color, RandomGaussianBlur(0.5), normalize])
    return lambda image: [first(image), second(image), *[local(image) for _ in range(n_local)]]


def _per_image(paths: list[Path], transform, collate: bool = True,  # type: ignore[no-untyped-def]
               batch: int = 16) -> tuple[float, list]:
    """Images/s of decode + augmentation (+ collation into batches of ``batch``), one thread; the samples
    and the collated batches."""
    samples, batches = [], []
    start = time.perf_counter()
    for first in range(0, len(paths), batch):
        chunk = []
        for index in range(first, min(first + batch, len(paths))):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(sample_seed(0, 0, index))
                chunk.append((transform(load_rgb(paths[index])), 0))
        if collate:
            batches.append(collate_crops(chunk)[0])
        samples += [crops for crops, _ in chunk]
    return len(paths) / (time.perf_counter() - start), [samples, batches]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images")
    parser.add_argument("--generated", action="store_true",
                        help="generated 500x375 JPEGs, even with ../shared")
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the two PIL paths")
    args = parser.parse_args()
    torch.set_num_threads(1)
    hue.build_tables()  # once per worker process in a run: not part of the per-image cost
    with tempfile.TemporaryDirectory() as scratch:
        paths = _images(args.images, args.n, Path(scratch), args.generated)
        kinds = crop_kinds(GLOBAL, LOCAL, (0.4, 1.0), (0.05, 0.4), N_LOCAL)
        reference = torchvision_multicrop(GLOBAL, LOCAL, N_LOCAL)
        ours = MultiCropAugmentation(GLOBAL, LOCAL, local_crops_number=N_LOCAL, as_uint8=True)
        torchvision_rates, pil_rates = [], []
        for _ in range(args.rounds):
            rate, (_, expected) = _per_image(paths, reference)
            torchvision_rates.append(rate)
            rate, (_, uint8_batches) = _per_image(paths, ours)
            pil_rates.append(rate)
        torch.set_num_threads(2)  # normalisation runs in the training process, on its threads
        start = time.perf_counter()
        normalised = [normalize_crops(crops) for crops in uint8_batches]
        normalize_s = (time.perf_counter() - start) / len(uint8_batches)
        torch.set_num_threads(1)
        if not all(torch.equal(a, b) for x, y in zip(normalised, expected, strict=True)
                   for a, b in zip(x, y, strict=True)):
            raise AssertionError("dinofeat's PIL path made other pixels than torchvision's")
        params_rate, (samples, _) = _per_image(paths, MultiCropParams(kinds), collate=False)
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
        "torchvision_pil_images_per_s_per_core": [round(r, 2) for r in torchvision_rates],
        "dinofeat_pil_images_per_s_per_core": [round(r, 2) for r in pil_rates],
        "dinofeat_pil_speedup": round(statistics.median(pil_rates) / statistics.median(torchvision_rates), 3),
        "normalisation_ms_per_batch_of_16_two_threads": round(normalize_s * 1e3, 2),
        "device_path_worker_images_per_s_per_core": round(params_rate, 2),
        "device_path_worker_speedup": round(params_rate / statistics.median(torchvision_rates), 2),
        f"device_stage_images_per_s_on_{device.type}": round(device_rate, 2),
    }, indent=2))


if __name__ == "__main__":
    main()
