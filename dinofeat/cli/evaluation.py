"""``dinofeat retrieval | copydetect | davis | segprobe``: the DINO paper's retrieval, copy-detection and
segmentation evaluations (k-NN and linear: :mod:`dinofeat.cli.classification`).

Features are extracted through the one torchrun-aware loop (:mod:`dinofeat.features.loop`),
streamed to ``--cache DIR/<name>-<key>.npy`` (the key hashes the model, the protocol settings and
the file list), and reused by later runs with the same key. Every dataset is checked before the
first image is read, so a bad ground-truth file or a missing annotation costs seconds, not hours.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from dinofeat.cli.common import (
    add_batch_options,
    add_model_options,
    load_model_option,
    model_source,
    write_json,
)
from dinofeat.data.files import list_image_files
from dinofeat.evaluation import copy_detection as cd
from dinofeat.evaluation import retrieval as rt
from dinofeat.evaluation import segmentation_probe as sp
from dinofeat.evaluation import video_segmentation as vs
from dinofeat.features.extractor import FeatureExtractor
from dinofeat.features.stores.cache import cache_key, cached_features
from dinofeat.search.descriptors import cls_gem
from dinofeat.search.neighbors import as_float_tensor
from dinofeat.utils.distributed import barrier, init_from_env, rank_and_world, shard_indices

DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dinofeat" / "eval-features"


def model_identity(source: str) -> Any:
    """What decides a model's features: the zoo / Hub name, or a local path with its files' size and time."""
    path = Path(source)
    if not path.exists():
        return source
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    return [str(path.resolve())] + [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def _common_options(parser: argparse.ArgumentParser, batch_size: int | None) -> None:
    """Model, batch, cache and JSON options; ``--batch-size`` unless fixed (``None``)."""
    add_model_options(parser)
    add_batch_options(parser, batch_size)
    parser.add_argument(
        "--cache",
        default=str(DEFAULT_CACHE),
        help=f"folder of cached features, reused when model and settings match (default {DEFAULT_CACHE})",
    )
    parser.add_argument("--no-cache", action="store_true", help="extract features anew and keep none")
    parser.add_argument("-o", "--output-json", dest="json", help="write the results as JSON")


class _Features:
    """Extract-or-reuse features of file lists for one command run (model loaded once, lazily)."""

    def __init__(self, args: argparse.Namespace, protocol: str, **settings: Any) -> None:
        self.args = args
        self.settings = {
            "protocol": protocol,
            "model": model_identity(model_source(args)),
            "arch": args.arch,
            **({"random_init": True} if args.random_init else {}),  # default runs keep their cache keys
            **settings,
        }
        self._model: FeatureExtractor | None = None

    @property
    def model(self) -> FeatureExtractor:
        if self._model is None:
            init_from_env()
            self._model = load_model_option(self.args)
        return self._model

    def __call__(self, name: str, files: Sequence[Path], **extraction: Any) -> np.ndarray | None:
        key = cache_key(**self.settings, name=name, files=[str(f) for f in files])
        cache = None if self.args.no_cache else self.args.cache
        extraction.setdefault("batch_size", getattr(self.args, "batch_size", 1))
        return cached_features(
            self.model,
            list(files),
            cache,
            name,
            key,
            num_workers=self.args.workers,
            progress=not self.args.no_progress,
            **extraction,
        )


def _is_main() -> bool:
    return rank_and_world()[0] == 0


# ------------------------------------------------------------------ retrieval
def run_retrieval(args: argparse.Namespace) -> int:
    dataset = rt.RevisitedDataset.open(args.data, args.dataset)  # gnd checked before any extraction
    features = _Features(args, "retrieval", imsize=args.imsize, multiscale=args.multiscale)
    fn = rt.multiscale_fn(features.model) if args.multiscale else None
    # One image per batch, as the official script: the thumbnails keep their aspect ratio.
    common = {"feature_fn": fn, "transform": rt.RetrievalTransform(args.imsize), "batch_size": 1}
    db = features(f"{args.dataset}-database", dataset.db_files, **common)
    queries = features(f"{args.dataset}-queries", dataset.query_files, **common)
    if db is None or queries is None:
        return 0
    result = rt.revisited_map(db, queries, dataset.gnd)
    print(f">> {args.dataset}: mAP M: {100 * result['mapM']:.2f}, H: {100 * result['mapH']:.2f}")
    print(
        f">> {args.dataset}: mP@k{result['ks']} M: {np.round(100 * np.array(result['mprM']), 2).tolist()}, "
        f"H: {np.round(100 * np.array(result['mprH']), 2).tolist()}"
    )
    if args.json:
        write_json(
            args.json,
            {
                "protocol": "revisited Oxford/Paris (DINO eval_image_retrieval)",
                "dataset": args.dataset,
                "model": model_source(args),
                "imsize": args.imsize,
                "multiscale": args.multiscale,
                "num_database": len(dataset.db_files),
                "num_queries": len(dataset.query_files),
                **result,
            },
        )
    return 0


# ------------------------------------------------------------------ copy detection
def run_copydetect(args: argparse.Namespace) -> int:
    originals, blocks = cd.copydays_blocks(args.data)
    distractors = list_image_files(args.distractors) if args.distractors else []
    whitening_files = list_image_files(args.whitening) if args.whitening else []
    features = _Features(args, "copydetect", imsize=args.imsize)
    model = features.model
    common = {
        "feature_fn": lambda batch: cls_gem(model, batch),
        "transform": cd.CopyDetectionTransform(args.imsize),
    }
    parts = [features("copydays-original", originals, **common)]
    if distractors:
        parts.append(features("copydays-distractors", distractors, **common))
    query_parts = [features(f"copydays-{b.name.replace('/', '-')}", b.files, **common) for b in blocks]
    whitening_features = (
        features("copydays-whitening", whitening_files, **common) if whitening_files else None
    )
    if not _is_main():
        return 0
    # On rank 0 every part is present (the other ranks have returned).
    database = torch.cat([as_float_tensor(p) for p in parts if p is not None])
    queries = [as_float_tensor(q) for q in query_parts if q is not None]
    if whitening_features is not None:
        whitening = cd.Whitening.fit(whitening_features)
        database, queries = whitening.apply(database), [whitening.apply(q) for q in queries]
    results = {}
    for block, block_queries in zip(blocks, queries, strict=True):
        mean_ap, aps = cd.copy_detection_map(block_queries, database, block.positives)
        results[block.name] = {"mAP": mean_ap, "num_queries": len(aps), "APs": aps}
        print(f"eval on {block.name} mAP={mean_ap:.3f}")
    if args.json:
        write_json(
            args.json,
            {
                "protocol": "Copydays copy detection (DINO eval_copy_detection)",
                "model": model_source(args),
                "imsize": args.imsize,
                "num_originals": len(originals),
                "num_distractors": len(distractors),
                "whitening_images": len(whitening_files),
                "main_block": cd.MAIN_BLOCK,
                "blocks": results,
            },
        )
    return 0


# ------------------------------------------------------------------ DAVIS
def _segment_video(
    model: FeatureExtractor, video: vs.DavisVideo, folder: Path, args: argparse.Namespace
) -> None:
    """Write ``folder/<frame>.png`` for every frame, each atomically; a complete folder is kept as is."""
    outputs = [folder / f"{frame.stem}.png" for frame in video.frames]
    if all(path.is_file() for path in outputs):
        return  # finished by an earlier run
    maps = vs.iter_propagate(
        model, video.frames, video.first_annotation, args.n_last_frames, args.neighborhood, args.topk
    )
    bar = tqdm(
        zip(outputs, maps, strict=True),
        total=len(outputs),
        desc=video.name,
        unit="frame",
        disable=args.no_progress,
        leave=False,
    )
    for path, labels in bar:
        vs.save_label_png(path, labels)


def run_davis(args: argparse.Namespace) -> int:
    videos = vs.davis_videos(args.data, args.split, need_all_annotations=not args.no_eval)
    output = Path(args.output)
    init_from_env()
    rank, world = rank_and_world()
    model = load_model_option(args)
    mine = [videos[i] for i in shard_indices(len(videos), rank, world)]
    for video in tqdm(mine, desc="videos", unit="video", disable=args.no_progress or rank != 0):
        _segment_video(model, video, output / video.name, args)
    if world > 1:
        barrier()
    if rank != 0:
        return 0
    print(f"wrote label PNGs of {len(videos)} videos to {output}")
    if args.no_eval:
        return 0
    per_video = {}
    for video in videos:
        predicted = np.stack(
            [vs.read_annotation(output / video.name / f"{f.stem}.png") for f in video.frames]
        )
        truth = np.stack([vs.read_annotation(path) for path in video.annotations])
        per_video[video.name] = vs.davis_j_and_f(predicted, truth)
    objects = [o for result in per_video.values() for o in result["per_object"].values()]
    j_mean = float(np.mean([o["J_mean"] for o in objects]))
    f_mean = float(np.mean([o["F_mean"] for o in objects]))
    print(
        f"J&F-Mean {100 * (j_mean + f_mean) / 2:.1f}  J-Mean {100 * j_mean:.1f}  F-Mean {100 * f_mean:.1f} "
        f"({len(objects)} objects in {len(videos)} videos)"
    )
    if args.json:
        write_json(
            args.json,
            {
                "protocol": "DAVIS-2017 semi-supervised, label propagation (DINO)",
                "model": model_source(args),
                "n_last_frames": args.n_last_frames,
                "neighborhood": args.neighborhood,
                "topk": args.topk,
                "J_mean": j_mean,
                "F_mean": f_mean,
                "J&F_mean": (j_mean + f_mean) / 2,
                "videos": per_video,
            },
        )
    return 0


# ------------------------------------------------------------------ segmentation probe
def run_segprobe(args: argparse.Namespace) -> int:
    config = sp.SegProbeConfig(
        n_last_blocks=args.n_last_blocks,
        batchnorm=not args.no_batchnorm,
        image_size=args.image_size,
        epochs=args.epochs,
        batch_size=args.probe_batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        seed=args.seed,
        reduce_zero_label=args.reduce_zero_label,
    )
    splits = sp.scan_segmentation_folder(args.train), sp.scan_segmentation_folder(args.val)
    masks = [
        sp.load_masks(s, config.image_size, args.num_classes, config.ignore_index, config.reduce_zero_label)
        for s in splits
    ]  # every mask checked before any feature is extracted
    features = _Features(args, "segprobe", image_size=config.image_size, n_last_blocks=config.n_last_blocks)
    model = features.model
    patch = model.patch_size
    if patch is None or config.image_size % patch:
        raise ValueError(f"--image-size {config.image_size} must be a multiple of the ViT patch size {patch}")
    common = {
        "feature_fn": sp.patch_feature_fn(model, config.n_last_blocks),
        "size": (config.image_size, config.image_size),
    }
    train, val = (
        features(name, split.images, **common)
        for name, split in zip(("segprobe-train", "segprobe-val"), splits, strict=True)
    )
    if train is None or val is None:
        return 0
    grid = (config.image_size // patch, config.image_size // patch)
    result = sp.train_seg_probe(train, masks[0], val, masks[1], grid, args.num_classes, config)
    print(
        f"linear segmentation probe: val mIoU {100 * result['final']['mIoU']:.2f} "
        f"({len(splits[0].images)} train, {len(splits[1].images)} val images)"
    )
    if args.json:
        write_json(
            args.json,
            {
                "protocol": "linear segmentation probe on frozen patch tokens (DINOv2 linear)",
                "model": model_source(args),
                "num_classes": args.num_classes,
                **result,
            },
        )
    return 0


def add_parsers(subparsers: Any) -> None:
    _add_search_parsers(subparsers)
    _add_segmentation_parsers(subparsers)


def _add_search_parsers(subparsers: Any) -> None:
    retrieval = subparsers.add_parser(
        "retrieval", help="revisited Oxford / Paris image retrieval (mAP M / H)"
    )
    retrieval.add_argument("--dataset", required=True, choices=rt.DATASETS)
    retrieval.add_argument(
        "--data", required=True, help="folder holding <dataset>/gnd_<dataset>.pkl and <dataset>/jpg"
    )
    retrieval.add_argument("--multiscale", action="store_true", help="mean of scales 1, 1/sqrt(2), 1/2")
    retrieval.add_argument("--imsize", type=int, default=224, help="images shrunk to fit IMSIZE x IMSIZE")
    _common_options(retrieval, batch_size=None)  # one image per batch: sizes differ
    retrieval.set_defaults(func=run_retrieval)

    copy = subparsers.add_parser("copydetect", help="Copydays copy detection (mAP per block)")
    copy.add_argument("--data", required=True, help="Copydays folder (original/, strong/, jpegqual/, crops/)")
    copy.add_argument("--whitening", help="folder of images to learn the PCA whitening on (paper: 20k YFCC)")
    copy.add_argument(
        "--distractors", help="folder of distractor images added to the database (paper: 10k YFCC)"
    )
    copy.add_argument("--imsize", type=int, default=320, help="images resized to IMSIZE x IMSIZE")
    _common_options(copy, batch_size=16)
    copy.set_defaults(func=run_copydetect)


def _add_segmentation_parsers(subparsers: Any) -> None:
    davis = subparsers.add_parser(
        "davis", help="DAVIS-2017 video object segmentation by label propagation (J&F)"
    )
    davis.add_argument(
        "--data", required=True, help="DAVIS folder (JPEGImages/480p, Annotations/480p, ImageSets/2017)"
    )
    davis.add_argument("--output", required=True, help="folder for the label PNGs, one sub-folder per video")
    davis.add_argument("--split", default="val", help="ImageSets/2017/<split>.txt")
    davis.add_argument("--n-last-frames", type=int, default=7)
    davis.add_argument("--neighborhood", type=int, default=12, help="source window radius in patches")
    davis.add_argument("--topk", type=int, default=5)
    davis.add_argument(
        "--no-eval", action="store_true", help="only write the label PNGs (no ground truth needed)"
    )
    davis.add_argument("--no-progress", action="store_true", help="hide progress bars")
    davis.add_argument("-o", "--output-json", dest="json", help="write J&F as JSON")
    add_model_options(davis)
    davis.set_defaults(func=run_davis)

    seg = subparsers.add_parser("segprobe", help="linear segmentation probe on frozen patch tokens (mIoU)")
    seg.add_argument("--train", required=True, help="split folder: images/ + annotations/ (or VOC's names)")
    seg.add_argument("--val", required=True, help="validation split folder, same layout")
    seg.add_argument("--num-classes", type=int, required=True, help="classes 0..N-1 (255 is ignored)")
    defaults = sp.SegProbeConfig()
    seg.add_argument(
        "--n-last-blocks", type=int, default=defaults.n_last_blocks, help="1 (linear) or 4 (linear4)"
    )
    seg.add_argument("--no-batchnorm", action="store_true", help="no BatchNorm before the linear layer")
    seg.add_argument(
        "--image-size", type=int, default=defaults.image_size, help="images and masks resized to S x S"
    )
    seg.add_argument("--epochs", type=int, default=defaults.epochs)
    seg.add_argument("--probe-batch-size", type=int, default=defaults.batch_size)
    seg.add_argument("--lr", type=float, default=defaults.lr)
    seg.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    seg.add_argument("--seed", type=int, default=defaults.seed)
    seg.add_argument(
        "--reduce-zero-label", action="store_true", help="ADE20K: label 0 ignored, others shift down"
    )
    _common_options(seg, batch_size=16)
    seg.set_defaults(func=run_segprobe)
