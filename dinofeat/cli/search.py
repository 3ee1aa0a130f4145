"""``dinofeat index | search | dedup``: image search from the shell."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
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
from dinofeat.features.stores.shards import is_shard_folder, shard_manifest
from dinofeat.search.dedup import DEDUP_CODES, check_threshold, duplicate_groups, index_duplicate_groups
from dinofeat.search.descriptors import descriptor_fn
from dinofeat.search.index import ImageIndex, IndexOptions, parse_size
from dinofeat.search.index.manifest import MANIFEST
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


def _options(args: argparse.Namespace) -> IndexOptions:
    return IndexOptions(index_type=args.index_type, refine=args.refine, nprobe=args.nprobe,
                        memory_budget=parse_size(args.memory_budget) if args.memory_budget else None)


def _index_shards(args: argparse.Namespace) -> int:
    """Index the CLS features of a `dinofeat embed` shard folder: no model pass, streamed, and shared
    among the processes of a torchrun (or RANK / WORLD_SIZE) launch."""
    meta = shard_manifest(args.folder)
    if args.gem:
        raise ValueError(f"{args.folder} holds CLS features only: --gem needs the patch tokens (index the "
                         "images instead)")
    if args.model and model_id(args.model, args.random_init) != meta["model"]:
        raise ValueError(f"{args.folder} holds features of {meta['model']!r}, not of --model {args.model!r}")
    report = ImageIndex.add_shards(args.output, args.folder, options=_options(args),
                                   progress=not args.no_progress)
    state = "" if report.committed else " (the last process to finish merges and commits)"
    print(f"{args.output}: added {report.added} images, {report.total} in total{state}")
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
                                     kind=kind, options=_options(args))
    print(f"{args.output}: added {count} images, {len(index)} in total")
    return 0


def _query_descriptors(args: argparse.Namespace, index: ImageIndex) -> tuple[list[str], torch.Tensor]:
    """Names and descriptors of the queries: images (through the model) and .npy descriptor files."""
    names: list[str] = []
    parts: list[torch.Tensor] = []
    images = [p for q in args.queries if not q.endswith(".npy")
              for p in (list_image_files(q) if Path(q).is_dir() else [Path(q)])]
    missing = [str(q) for q in [*images, *(Path(q) for q in args.queries if q.endswith(".npy"))]
               if not q.is_file()]
    if missing:
        raise FileNotFoundError(f"query image not found: {', '.join(missing)}")
    for query in args.queries:
        if query.endswith(".npy"):
            array = np.load(query)
            if array.ndim == 1:
                array = array[None]
            names += [f"{query}[{row}]" for row in range(len(array))]
            parts.append(torch.from_numpy(np.asarray(array, np.float32)))
    if images:
        source, random_init = (args.model, args.random_init) if args.model else _source_of(index.model)
        extractor = load_model(source, random_init, args.device, args.arch)
        _, descriptors = _descriptors(extractor, images, index.kind, args)
        names += [str(p) for p in images]
        parts.append(descriptors)
    return names, torch.cat(parts)


def run_search(args: argparse.Namespace) -> int:
    if args.top < 1:
        raise ValueError(f"--top must be >= 1, got {args.top}")
    identity = model_id(args.model, args.random_init) if args.model else None
    index = ImageIndex.open(args.index, model=identity)
    queries, descriptors = _query_descriptors(args, index)
    hits = index.search(descriptors, top=args.top, nprobe=args.nprobe, candidates=args.candidates)
    for query, found in zip(queries, hits, strict=True):
        print(query)
        for rank, hit in enumerate(found, start=1):
            print(f"  {rank:3d}  {hit.score:.4f}  {hit.path}")
    if args.json:
        write_json(
            args.json,
            [
                {"query": q, "results": [{"path": h.path, "score": h.score, "id": h.id} for h in found]}
                for q, found in zip(queries, hits, strict=True)
            ],
        )
    if args.sheet:
        if any(q.endswith(".npy") for q in args.queries):
            raise ValueError("--sheet needs query images, not .npy descriptors")
        contact_sheet(queries, hits, args.sheet)
    return 0


def _source_of(identity: str) -> tuple[str, bool]:
    suffix = f":random-init-seed{RANDOM_INIT_SEED}"
    return (identity[: -len(suffix)], True) if identity.endswith(suffix) else (identity, False)


def _dedup_index(args: argparse.Namespace) -> int:
    index = ImageIndex.open(args.folder)
    groups = index_duplicate_groups(index, args.threshold, nprobe=args.nprobe, progress=not args.no_progress)
    named = [index.paths(group) for group in groups]
    for number, group in enumerate(named, start=1):
        print(f"group {number}: " + "  ".join(group))
    print(f"{len(groups)} groups of near-duplicates among {len(index)} images (threshold {args.threshold})")
    if args.json:
        write_json(args.json, {"threshold": args.threshold, "descriptor": index.kind, "groups": named})
    return 0


def run_dedup(args: argparse.Namespace) -> int:
    check_threshold(args.threshold)
    if (Path(args.folder) / MANIFEST).is_file() and not is_shard_folder(args.folder):
        return _dedup_index(args)
    if is_shard_folder(args.folder):
        raise ValueError(f"{args.folder} is a shard folder: index it first (`dinofeat index {args.folder} "
                         "-o INDEX`), then run `dinofeat dedup INDEX`")
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


def _add_index_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--memory-budget", help="memory the search may keep busy for a new large index, "
                                                "e.g. 4G (default: codes of dim/12 bytes per image)")
    parser.add_argument("--index-type", help="faiss factory string of a new index's IVF stage, e.g. "
                                             "'OPQ32_128,IVF16384_HNSW32,PQ32', or 'Flat' for exact search "
                                             "(default: chosen from the number of images)")
    parser.add_argument("--refine", default=IndexOptions.refine,
                        help="codec of vectors a new compressed index stores when the shards cannot serve "
                             "them in place: SQfp16, SQ8 or Flat (default %(default)s)")
    parser.add_argument("--nprobe", type=int, help="inverted lists visited per query (default: by size)")


def add_parsers(subparsers: Any) -> None:
    index = subparsers.add_parser("index", help="build or extend an image search index")
    index.add_argument("folder", help="folder of images (searched recursively), or a Parquet shard folder "
                                      "written by `dinofeat embed` (its CLS features, no model pass; shared "
                                      "among the processes of a torchrun launch)")
    index.add_argument("-o", "--output", required=True, help="index folder (extended if it exists)")
    index.add_argument("--gem", action="store_true", help="descriptor CLS ⊕ GeM(p=4) of patch tokens")
    _add_index_options(index)
    add_model_options(index)
    add_batch_options(index)
    add_skip_unreadable_option(index)
    index.set_defaults(func=run_index)

    search = subparsers.add_parser("search", help="most similar indexed images of query images")
    search.add_argument("index", help="index folder made by `dinofeat index`")
    search.add_argument("queries", nargs="+", help="query images or folders, or .npy files of descriptors "
                                                   "(one per row; no model pass)")
    search.add_argument("--top", type=int, default=10)
    search.add_argument("--nprobe", type=int, help="inverted lists visited per query (default: the index's)")
    search.add_argument("--candidates", type=int,
                        help="codes re-ranked by exact vectors per result (default: the index's)")
    search.add_argument("--json", help="write results as JSON")
    search.add_argument("--sheet", help="write a contact-sheet PNG")
    add_model_options(search, default="the model the index was built with")
    add_batch_options(search)
    search.set_defaults(func=run_search)

    dedup = subparsers.add_parser("dedup", help="groups of near-duplicate images")
    dedup.add_argument("folder", help="folder of images, or an index folder made by `dinofeat index` "
                                      "(of any size)")
    dedup.add_argument("--threshold", type=float, required=True, help="cosine similarity, e.g. 0.9")
    dedup.add_argument("--nprobe", type=int, help=f"for an index: inverted lists searched per image "
                                                  f"(default: those holding about {DEDUP_CODES} images)")
    dedup.add_argument("--gem", action="store_true", help="descriptor CLS ⊕ GeM(p=4) of patch tokens")
    dedup.add_argument("--json", help="write groups as JSON")
    add_model_options(dedup)
    add_batch_options(dedup)
    add_skip_unreadable_option(dedup)
    dedup.set_defaults(func=run_dedup)
