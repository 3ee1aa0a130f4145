"""``dinofeat knn | linear | index | search | dedup``: evaluation and image search from the shell."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import dinofeat
from dinofeat.cli.common import add_skip_unreadable_option, add_workers_option, report_skipped
from dinofeat.cli.common import write_json as _write_json
from dinofeat.errors import ImageReadError
from dinofeat.evaluation.contact_sheet import contact_sheet
from dinofeat.evaluation.dedup import check_threshold, duplicate_groups
from dinofeat.evaluation.descriptors import descriptor_fn
from dinofeat.evaluation.distributed import init_from_env, rank_and_world
from dinofeat.evaluation.features import (
    BatchFeatures,
    FeatureSet,
    drop_unreadable,
    extract_features,
    extract_folder,
    scan_image_folder,
)
from dinofeat.evaluation.index import ImageIndex
from dinofeat.evaluation.knn import DEFAULT_KS, DEFAULT_TEMPERATURE, check_knn_settings, knn_classify
from dinofeat.evaluation.linear import LinearProbeConfig, linear_probe_features, train_linear_probe
from dinofeat.extraction import is_shard_folder, iter_shard_tables, shard_manifest, table_features
from dinofeat.extractor import FeatureExtractor
from dinofeat.inputs import list_image_files
from dinofeat.model_ids import RANDOM_INIT_SEED, model_id
from dinofeat.registry import BUNDLED_MODEL


def _model_args(parser: argparse.ArgumentParser, default: str = f"{BUNDLED_MODEL}, bundled") -> None:
    # default=None: "not given" stays visible (--load-features and search then trust the saved model).
    parser.add_argument(
        "--model",
        help=f"zoo name or dinofeat model folder (anything dinofeat.load accepts; default {default})",
    )
    parser.add_argument(
        "--random-init",
        action="store_true",
        help=f"build the architecture with random weights (seed {RANDOM_INIT_SEED}); smoke tests only",
    )
    parser.add_argument("--device", default=None, help="cuda / mps / cpu (default: best available)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    add_workers_option(parser)
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def model_source(args: argparse.Namespace) -> str:
    """``--model``, or the bundled model (offline) when it is not given."""
    return str(args.model) if args.model else BUNDLED_MODEL


def load_model(source: str, random_init: bool = False, device: str | None = None) -> FeatureExtractor:
    if random_init:
        torch.manual_seed(RANDOM_INIT_SEED)
    return dinofeat.load(source, pretrained=not random_init, device=device)


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
    extractor = load_model(model_source(args), args.random_init, args.device)
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
    _model_args(parser, default=f"{BUNDLED_MODEL}; with --load-features, the saved features' model")
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
    _write_json(
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
    _write_json(
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


# ------------------------------------------------------------------ index / search / dedup
def _descriptors(
    extractor: FeatureExtractor, files: list[Path], kind: str, args: argparse.Namespace,
    skip_unreadable: bool = False,
) -> tuple[list[Path], torch.Tensor]:
    """The readable files and their descriptors (all files, or an error, unless ``skip_unreadable``)."""
    features = extract_features(
        extractor,
        files,
        feature_fn=descriptor_fn(extractor, kind),
        batch_size=args.batch_size,
        num_workers=args.workers,
        progress=not args.no_progress,
        skip_unreadable=skip_unreadable,
    )
    assert features is not None  # single process
    if not skip_unreadable:
        return files, features
    kept, features, skipped = drop_unreadable(files, features)
    report_skipped(skipped)
    return kept, features


def _index_shards(args: argparse.Namespace) -> int:
    """Index the CLS features of a `dinofeat embed` shard folder: no model pass."""
    meta = shard_manifest(args.folder)
    if args.gem:
        raise ValueError(f"{args.folder} holds CLS features only: --gem needs the patch tokens (index the "
                         "images instead)")
    if args.model and model_id(args.model, args.random_init) != meta["model"]:
        raise ValueError(f"{args.folder} holds features of {meta['model']!r}, not of --model {args.model!r}")
    parts = [table_features(table) for table in iter_shard_tables(args.folder)]
    features = torch.nn.functional.normalize(torch.cat([f for f, _ in parts]), dim=1)
    files = [name for _, names in parts for name in names]
    index, count = ImageIndex.extend(args.output, files, features, model=meta["model"], kind="cls")
    print(f"{args.output}: added {count} images, {len(index)} in total")
    return 0


def run_index(args: argparse.Namespace) -> int:
    if is_shard_folder(args.folder):
        return _index_shards(args)
    kind = "cls+gem" if args.gem else "cls"
    identity = model_id(model_source(args), args.random_init)
    files = list_image_files(args.folder)
    extractor = load_model(model_source(args), args.random_init, args.device)
    dim = extractor.embed_dim * len(kind.split("+"))
    # A first look (no lock): refuse a mismatched index before extracting, skip what is indexed.
    current = ImageIndex.open_or_create(args.output, model=identity, kind=kind, dim=dim)
    new = current.missing(files)
    if not new:
        print(f"{args.output}: all {len(files)} images already indexed ({len(current)} in total)")
        return 0
    added, features = _descriptors(extractor, [Path(f) for f in new], kind, args, args.skip_unreadable)
    if not added:
        print(f"{args.output}: added 0 images, {len(current)} in total")
        return 0
    # Other processes may have extended the index meanwhile: extend() merges under the index's lock.
    index, count = ImageIndex.extend(args.output, [str(f) for f in added], features, model=identity,
                                     kind=kind)
    print(f"{args.output}: added {count} images, {len(index)} in total")
    return 0


def run_search(args: argparse.Namespace) -> int:
    if args.top < 1:
        raise ValueError(f"--top must be >= 1, got {args.top}")
    identity = model_id(args.model, args.random_init) if args.model else None
    index = ImageIndex.open(args.index, model=identity)
    queries = [p for q in args.queries for p in (list_image_files(q) if Path(q).is_dir() else [Path(q)])]
    missing = [str(q) for q in queries if not q.is_file()]
    if missing:
        raise FileNotFoundError(f"query image not found: {', '.join(missing)}")
    source, random_init = (args.model, args.random_init) if args.model else _source_of(index.model)
    extractor = load_model(source, random_init, args.device)
    _, descriptors = _descriptors(extractor, queries, index.kind, args)
    hits = index.search(descriptors, top=args.top)
    for query, found in zip(queries, hits, strict=True):
        print(query)
        for rank, hit in enumerate(found, start=1):
            print(f"  {rank:3d}  {hit.score:.4f}  {hit.path}")
    if args.json:
        _write_json(
            args.json,
            [
                {"query": str(q), "results": [{"path": h.path, "score": h.score} for h in found]}
                for q, found in zip(queries, hits, strict=True)
            ],
        )
    if args.sheet:
        contact_sheet([str(q) for q in queries], hits, args.sheet)
    return 0


def _source_of(identity: str) -> tuple[str, bool]:
    suffix = f":random-init-seed{RANDOM_INIT_SEED}"
    return (identity[: -len(suffix)], True) if identity.endswith(suffix) else (identity, False)


def run_dedup(args: argparse.Namespace) -> int:
    check_threshold(args.threshold)
    files = list_image_files(args.folder)
    extractor = load_model(model_source(args), args.random_init, args.device)
    listed = len(files)
    files, descriptors = _descriptors(
        extractor, files, "cls+gem" if args.gem else "cls", args, args.skip_unreadable
    )
    if not files:
        raise ImageReadError(f"none of the {listed} images under {args.folder} could be read")
    groups = duplicate_groups(descriptors, args.threshold)
    for number, group in enumerate(groups, start=1):
        print(f"group {number}: " + "  ".join(str(files[i]) for i in group))
    print(f"{len(groups)} groups of near-duplicates among {len(files)} images (threshold {args.threshold})")
    if args.json:
        _write_json(
            args.json,
            {
                "threshold": args.threshold,
                "descriptor": "cls+gem" if args.gem else "cls",
                "groups": [[str(files[i]) for i in g] for g in groups],
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

    index = subparsers.add_parser("index", help="build or extend an image search index")
    index.add_argument("folder", help="folder of images (searched recursively), or a Parquet shard folder "
                                      "written by `dinofeat embed` (its CLS features, no model pass)")
    index.add_argument("-o", "--output", required=True, help="index folder (extended if it exists)")
    index.add_argument("--gem", action="store_true", help="descriptor CLS ⊕ GeM(p=4) of patch tokens")
    _model_args(index)
    add_skip_unreadable_option(index)
    index.set_defaults(func=run_index)

    search = subparsers.add_parser("search", help="most similar indexed images of query images")
    search.add_argument("index", help="index folder made by `dinofeat index`")
    search.add_argument("queries", nargs="+", help="query images or folders")
    search.add_argument("--top", type=int, default=10)
    search.add_argument("--json", help="write results as JSON")
    search.add_argument("--sheet", help="write a contact-sheet PNG")
    _model_args(search, default="the model the index was built with")
    search.set_defaults(func=run_search)

    dedup = subparsers.add_parser("dedup", help="groups of near-duplicate images")
    dedup.add_argument("folder")
    dedup.add_argument("--threshold", type=float, required=True, help="cosine similarity, e.g. 0.9")
    dedup.add_argument("--gem", action="store_true", help="descriptor CLS ⊕ GeM(p=4) of patch tokens")
    dedup.add_argument("--json", help="write groups as JSON")
    _model_args(dedup)
    add_skip_unreadable_option(dedup)
    dedup.set_defaults(func=run_dedup)
