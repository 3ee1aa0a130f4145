"""Weighted k-NN on a small balanced subset of imagenette2 (../shared/data/imagenette2).

Usage:
    python examples/knn_imagenette.py [--model vit_s16 | --model path/to/model_folder] [--per-class 20]

Without --model a RANDOMLY INITIALISED ViT-S/16 is used (no download), so the accuracy is only a
little above chance (10 %): this shows the pipeline, not DINO's quality. Pass a pretrained model
(zoo name with downloadable weights or a local dinofeat model folder) for real numbers.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

import dinofeat
from dinofeat.evaluation.knn import knn_classify
from dinofeat.features.stores.feature_set import extract_folder

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "imagenette2"


def balanced_subset(source: Path, target: Path, per_class: int) -> Path:
    """Symlinks to the first ``per_class`` images of every class (the data are never copied)."""
    for class_dir in sorted(p for p in source.iterdir() if p.is_dir()):
        (target / class_dir.name).mkdir(parents=True)
        for image in sorted(class_dir.iterdir())[:per_class]:
            (target / class_dir.name / image.name).symlink_to(image)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="zoo name or model folder (default: random ViT-S/16)")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--per-class", type=int, default=20)
    args = parser.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"imagenette2 not found at {args.data}; pass --data")
    if args.model is None:
        torch.manual_seed(0)
        model, name = dinofeat.load("vit_s16", pretrained=False), "vit_s16 (RANDOM init)"
    else:
        model, name = dinofeat.load(args.model), args.model
    with tempfile.TemporaryDirectory() as tmp:
        train_dir = balanced_subset(args.data / "train", Path(tmp) / "train", args.per_class)
        val_dir = balanced_subset(args.data / "val", Path(tmp) / "val", max(1, args.per_class // 2))
        train = extract_folder(model, train_dir, model=name, num_workers=2)
        val = extract_folder(model, val_dir, model=name, num_workers=2)
    assert train is not None and val is not None
    result = knn_classify(train.features, train.labels, val.features, val.labels, ks=(10, 20))
    print(f"{name}: {len(train.files)} train / {len(val.files)} val images, {train.dim}-d CLS")
    for k, accuracy in result.items():
        print(f"  {k}-NN: top-1 {accuracy['top1']:.1f} %, top-5 {accuracy['top5']:.1f} %")


if __name__ == "__main__":
    main()
