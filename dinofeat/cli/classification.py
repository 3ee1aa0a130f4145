"""``dinofeat knn | linear``: the DINO paper's classification evaluations on labelled image folders."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dinofeat.cli.common import (
    add_batch_options,
    add_model_options,
    load_model_option,
    model_source,
    write_json,
)
from dinofeat.data.files import scan_image_folder
from dinofeat.evaluation.knn import DEFAULT_KS, DEFAULT_TEMPERATURE, check_knn_settings, knn_classify
from dinofeat.evaluation.linear import LinearProbeConfig, linear_probe_features, train_linear_probe
from dinofeat.features.extractor import FeatureExtractor
from dinofeat.features.image_files import BatchFeatures
from dinofeat.features.model_ids import model_id
from dinofeat.features.stores.feature_set import FeatureSet, extract_folder
from dinofeat.registry import BUNDLED_MODEL
from dinofeat.utils.distributed import init_from_env, rank_and_world


# ------------------------------------------------------------------ knn / linear
def _require_dataset_args(args: argparse.Namespace) -> None:
    """--train and --val given, and both folders present (when features are to be extracted)."""
    missing = [flag for flag, value in (("--train", args.train), ("--val", args.val)) if not value]
    if missing:
        raise ValueError(f"{', '.join(missing)} required unless --load-features is given")
    for flag, folder in (("--train", args.train), ("--val", args.val)):
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"{flag} folder not found: {folder}")


def _dataset_features(
    args: argparse.Namespace,
    kind: str,
    make_fn: Callable[[FeatureExtractor], BatchFeatures] | None,
    check_train_count: Callable[[int], None] | None = None,
) -> tuple[FeatureSet, FeatureSet] | None:
    """Train and val features: from ``--load-features DIR`` or extracted (then saved if asked).
    None on torchrun ranks other than 0. Before any extraction the folders are scanned once, their
    classes compared, and ``check_train_count`` given the number of train images."""
    wanted_model = model_id(args.model, args.random_init) if args.model else None
    if args.load_features:
        folder = Path(args.load_features)
        return (
            FeatureSet.load(folder / "train.safetensors", model=wanted_model, kind=kind),
            FeatureSet.load(folder / "val.safetensors", model=wanted_model, kind=kind),
        )
    _require_dataset_args(args)
    wanted_model = model_id(model_source(args), args.random_init)
    listings = scan_image_folder(args.train), scan_image_folder(args.val)
    if listings[0].class_names != listings[1].class_names:
        raise ValueError(
            f"train and val have different class folders: {listings[0].class_names[:5]}... vs "
            f"{listings[1].class_names[:5]}..."
        )
    if check_train_count is not None:
        check_train_count(len(listings[0].files))
    init_from_env()
    extractor = load_model_option(args)
    feature_fn = make_fn(extractor) if make_fn else None
    sets = [
        extract_folder(
            extractor,
            listing,
            model=wanted_model,
            feature_fn=feature_fn,
            kind=kind,
            batch_size=args.batch_size,
            num_workers=args.workers,
            progress=not args.no_progress,
        )
        for listing in listings
    ]
    train, val = sets
    if train is None or val is None:
        return None
    if args.save_features:
        train.save(Path(args.save_features) / "train.safetensors")
        val.save(Path(args.save_features) / "val.safetensors")
    return train, val


def _dataset_args(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser, default=f"{BUNDLED_MODEL}; with --load-features, the saved features' model")
    add_batch_options(parser)
    parser.add_argument("--train", help="training folder, one sub-folder per class")
    parser.add_argument("--val", help="validation folder with the same class sub-folders")
    parser.add_argument(
        "--save-features", metavar="DIR", help="write DIR/train.safetensors and DIR/val.safetensors"
    )
    parser.add_argument("--load-features", metavar="DIR", help="reuse features saved with --save-features")
    parser.add_argument("-o", "--output", required=True, help="result JSON file")


def run_knn(args: argparse.Namespace) -> int:
    # Refuse impossible settings before hours of feature extraction, not after.
    check_knn_settings(args.k, args.temperature)
    features = _dataset_features(
        args, "cls", None, lambda num_train: check_knn_settings(args.k, args.temperature, num_train)
    )
    if features is None or rank_and_world()[0] != 0:
        return 0
    train, val = features
    results = knn_classify(
        train.features,
        train.labels,
        val.features,
        val.labels,
        ks=args.k,
        temperature=args.temperature,
        num_classes=len(train.class_names),
    )
    for k, accuracy in results.items():
        print(f"{k:4d}-NN  top-1 {accuracy['top1']:6.2f}  top-5 {accuracy['top5']:6.2f}")
    write_json(
        args.output,
        {
            "protocol": "weighted k-NN (DINO eval_knn)",
            "model": train.model,
            "temperature": args.temperature,
            "feature_dim": train.dim,
            "num_train": len(train.files),
            "num_val": len(val.files),
            "classes": train.class_names,
            "results": {str(k): v for k, v in results.items()},
        },
    )
    return 0


def run_linear(args: argparse.Namespace) -> int:
    config = LinearProbeConfig(  # checked here, before the features are extracted
        epochs=args.epochs,
        batch_size=args.probe_batch_size,
        base_lr=args.lr,
        weight_decay=args.weight_decay,
        seed=args.seed,
    )
    kind = f"linear-last{args.n_last_blocks}" + ("+avgpool" if args.avgpool else "")
    features = _dataset_features(
        args, kind, lambda m: linear_probe_features(m, args.n_last_blocks, args.avgpool)
    )
    if features is None or rank_and_world()[0] != 0:
        return 0
    train, val = features
    result = train_linear_probe(
        train.features, train.labels, val.features, val.labels, config, num_classes=len(train.class_names)
    )
    best, last = result["best"], result["last"]
    print(
        f"linear probe: best top-1 {best['top1']:.2f} (epoch {best['epoch']}), last top-1 {last['top1']:.2f}"
    )
    write_json(
        args.output,
        {
            "protocol": "linear probe on cached features (DINO eval_linear, no augmentation)",
            "model": train.model,
            "features": kind,
            "feature_dim": train.dim,
            "num_train": len(train.files),
            "num_val": len(val.files),
            **result,
        },
    )
    return 0


def add_parsers(subparsers: Any) -> None:
    knn = subparsers.add_parser("knn", help="weighted k-NN accuracy (the DINO paper's k-NN evaluation)")
    _dataset_args(knn)
    knn.add_argument("--k", type=int, nargs="+", default=list(DEFAULT_KS), help="numbers of neighbours")
    knn.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE)
    knn.set_defaults(func=run_knn)

    linear = subparsers.add_parser("linear", help="linear probe on frozen (cached) features")
    _dataset_args(linear)
    defaults = LinearProbeConfig()
    linear.add_argument(
        "--n-last-blocks", type=int, default=4, help="concatenate the CLS of the last n blocks"
    )
    linear.add_argument(
        "--avgpool", action="store_true", help="also the mean of the last block's patch tokens"
    )
    linear.add_argument("--epochs", type=int, default=defaults.epochs)
    linear.add_argument("--probe-batch-size", type=int, default=defaults.batch_size)
    linear.add_argument("--lr", type=float, default=defaults.base_lr, help="base lr, scaled by batch / 256")
    linear.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    linear.add_argument("--seed", type=int, default=defaults.seed)
    linear.set_defaults(func=run_linear)
