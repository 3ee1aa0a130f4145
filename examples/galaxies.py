"""Synthetic 5-band "galaxies" for multi-band DINO training, and a k-NN check of a band model.

Three morphology classes, rendered from Sersic profiles (I(r) = exp(-b_n ((r / r_e)^(1/n) - 1))):
``elliptical`` (n ~ 4, round), ``disk`` (n ~ 1, flattened) and ``pair`` (two blobs). Colours (the
flux ratio between bands), brightness, size, position angle and centre are drawn independently of
the class, so the class is in the shape, not in the colour. Each band gets its own Gaussian PSF and
sky noise. Files are float32 ``.npy`` arrays (5, S, S).

    python examples/galaxies.py make OUT --train 3000 --labelled 300
    python examples/galaxies.py knn --model exported/ --data OUT [--random-init]

``make`` writes OUT/train/*.npy (unlabelled, for ``dinofeat-train``) and OUT/knn_{train,val}/CLASS/*.npy
(labelled, held back).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

import dinofeat
from dinofeat.data.bands import list_band_files
from dinofeat.evaluation.knn import knn_classify
from dinofeat.features.extractor import FeatureExtractor
from dinofeat.models import build_backbone

CLASSES = ("elliptical", "disk", "pair")
BANDS = 5
PSF_SIGMA = (1.3, 1.1, 1.0, 0.9, 0.9)  # px, per band (bluer bands blurrier, as in ground-based imaging)
SKY_SIGMA = (1.0, 0.6, 0.5, 0.6, 1.0)


def sersic(size: int, x0: float, y0: float, r_e: float, n: float, q: float, angle: float) -> np.ndarray:
    """A unit-peak-at-r_e Sersic profile on a size x size grid (axis ratio q, position angle in rad)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    dx, dy = x - x0, y - y0
    c, s = np.cos(angle), np.sin(angle)
    u, v = dx * c + dy * s, (-dx * s + dy * c) / q
    r = np.sqrt(u * u + v * v) + 1e-3
    b_n = 2 * n - 1 / 3
    return np.exp(-b_n * ((r / r_e) ** (1 / n) - 1))


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    radius = int(np.ceil(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    rows = np.apply_along_axis(lambda line: np.convolve(line, taps, mode="same"), 0, image)
    return np.apply_along_axis(lambda line: np.convolve(line, taps, mode="same"), 1, rows)


def render(label: int, rng: np.random.Generator, size: int = 40) -> np.ndarray:
    """One (5, size, size) float32 galaxy of class ``label``."""
    centre = size / 2 + rng.uniform(-3, 3, 2)
    angle = rng.uniform(0, np.pi)
    if CLASSES[label] == "elliptical":  # r_e, Sersic n, axis ratio
        shape = sersic(size, *centre, rng.uniform(2.0, 5.0), rng.uniform(3.0, 5.0), rng.uniform(0.7, 1.0),
                       angle)
    elif CLASSES[label] == "disk":
        shape = sersic(size, *centre, rng.uniform(3.0, 7.0), rng.uniform(0.7, 1.3), rng.uniform(0.2, 0.45),
                       angle)
    else:
        offset = rng.uniform(4, 7) * np.array([np.cos(angle), np.sin(angle)])
        shape = sum(sersic(size, *(centre + sign * offset), rng.uniform(1.5, 3.5), rng.uniform(1.0, 2.5),
                           rng.uniform(0.5, 1.0), rng.uniform(0, np.pi)) for sign in (-1, 1))
    shape = shape / shape.sum()
    flux = np.exp(rng.uniform(np.log(300), np.log(3000)))
    colour = np.exp(np.linspace(-1, 1, BANDS) * rng.normal(0, 0.5) + rng.normal(0, 0.15, BANDS))
    bands = [_blur(shape * flux * colour[b], PSF_SIGMA[b]) + rng.normal(0, SKY_SIGMA[b], (size, size))
             for b in range(BANDS)]
    return np.stack(bands).astype(np.float32)


def make(out: Path, n_train: int, n_labelled: int, size: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    (out / "train").mkdir(parents=True, exist_ok=True)
    for i in range(n_train):
        np.save(out / "train" / f"g{i:05d}.npy", render(int(rng.integers(len(CLASSES))), rng, size))
    for split in ("knn_train", "knn_val"):
        for label, name in enumerate(CLASSES):
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n_labelled // len(CLASSES)):
                np.save(folder / f"{name}{i:04d}.npy", render(label, rng, size))


def _labelled(folder: Path) -> tuple[list[Path], torch.Tensor]:
    files, labels = [], []
    for label, name in enumerate(CLASSES):
        found = list_band_files(folder / name)
        files += found
        labels += [label] * len(found)
    return files, torch.tensor(labels)


def knn(model_folder: str, data: Path, random_init: bool, k: int) -> dict[str, float]:
    """Weighted k-NN top-1 (the paper's, T = 0.07) of a band model on the labelled arrays."""
    model = dinofeat.load(model_folder, device="cpu")
    if random_init:
        torch.manual_seed(0)
        model = FeatureExtractor(build_backbone(model.backbone.config), model.preprocess, name="random-init")
    train_files, train_labels = _labelled(data / "knn_train")
    val_files, val_labels = _labelled(data / "knn_val")
    train, val = model.embed(train_files, batch_size=128), model.embed(val_files, batch_size=128)
    result = knn_classify(train, train_labels, val, val_labels, ks=(k,), temperature=0.07)[k]
    return {"model": model_folder, "random_init": random_init, f"knn{k}_top1": result["top1"],
            "n_train": len(train_files), "n_val": len(val_files)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    make_cmd = sub.add_parser("make")
    make_cmd.add_argument("out", type=Path)
    make_cmd.add_argument("--train", type=int, default=3000)
    make_cmd.add_argument("--labelled", type=int, default=300, help="per split, all classes together")
    make_cmd.add_argument("--size", type=int, default=40)
    make_cmd.add_argument("--seed", type=int, default=0)
    knn_cmd = sub.add_parser("knn")
    knn_cmd.add_argument("--model", required=True)
    knn_cmd.add_argument("--data", type=Path, required=True)
    knn_cmd.add_argument("--random-init", action="store_true")
    knn_cmd.add_argument("--k", type=int, default=20)
    args = parser.parse_args()
    if args.command == "make":
        make(args.out, args.train, args.labelled, args.size, args.seed)
    else:
        print(json.dumps(knn(args.model, args.data, args.random_init, args.k)))


if __name__ == "__main__":
    main()
