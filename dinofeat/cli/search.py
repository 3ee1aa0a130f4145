"""``dinofeat index | search | dedup``: image search from the shell."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from dinofeat.cli.common import (
    add_batch_options,
    add_model_options,
    add_skip_unreadable_option,
    load_model,
    load_model_option,
    model_source,
    report_skipped,
    write_json,
)
from dinofeat.data.files import list_image_files
from dinofeat.features.extractor import FeatureExtractor
from dinofeat.features.image_files import drop_unreadable, extract_features
from dinofeat.features.model_ids import RANDOM_INIT_SEED, model_id
from dinofeat.features.stores.shards import is_shard_folder, iter_shard_tables, shard_manifest, table_features
from dinofeat.search.dedup import check_threshold, duplicate_groups
from dinofeat.search.descriptors import descriptor_fn
from dinofeat.search.index import ImageIndex
from dinofeat.utils.errors import ImageReadError
from dinofeat.viz.contact_sheet import contact_sheet


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
    extractor = load_model_option(args)
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
    extractor = load_model(source, random_init, args.device, args.arch)
    _, descriptors = _descriptors(extractor, queries, index.kind, args)
    hits = index.search(descriptors, top=args.top)
    for query, found in zip(queries, hits, strict=True):
        print(query)
        for rank, hit in enumerate(found, start=1):
            print(f"  {rank:3d}  {hit.score:.4f}  {hit.path}")
    if args.json:
        write_json(
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
    extractor = load_model_option(args)
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
        write_json(
            args.json,
            {
                "threshold": args.threshold,
                "descriptor": "cls+gem" if args.gem else "cls",
                "groups": [[str(files[i]) for i in g] for g in groups],
            },
        )
    return 0


def add_parsers(subparsers: Any) -> None:
    index = subparsers.add_parser("index", help="build or extend an image search index")
    index.add_argument("folder", help="folder of images (searched recursively), or a Parquet shard folder "
                                      "written by `dinofeat embed` (its CLS features, no model pass)")
    index.add_argument("-o", "--output", required=True, help="index folder (extended if it exists)")
    index.add_argument("--gem", action="store_true", help="descriptor CLS ⊕ GeM(p=4) of patch tokens")
    add_model_options(index)
    add_batch_options(index)
    add_skip_unreadable_option(index)
    index.set_defaults(func=run_index)

    search = subparsers.add_parser("search", help="most similar indexed images of query images")
    search.add_argument("index", help="index folder made by `dinofeat index`")
    search.add_argument("queries", nargs="+", help="query images or folders")
    search.add_argument("--top", type=int, default=10)
    search.add_argument("--json", help="write results as JSON")
    search.add_argument("--sheet", help="write a contact-sheet PNG")
    add_model_options(search, default="the model the index was built with")
    add_batch_options(search)
    search.set_defaults(func=run_search)

    dedup = subparsers.add_parser("dedup", help="groups of near-duplicate images")
    dedup.add_argument("folder")
    dedup.add_argument("--threshold", type=float, required=True, help="cosine similarity, e.g. 0.9")
    dedup.add_argument("--gem", action="store_true", help="descriptor CLS ⊕ GeM(p=4) of patch tokens")
    dedup.add_argument("--json", help="write groups as JSON")
    add_model_options(dedup)
    add_batch_options(dedup)
    add_skip_unreadable_option(dedup)
    dedup.set_defaults(func=run_dedup)
