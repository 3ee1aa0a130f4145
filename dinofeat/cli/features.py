"""``dinofeat models``, ``dinofeat embed`` and ``dinofeat attention``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from dinofeat.cli.common import (
    add_model_options,
    add_skip_unreadable_option,
    add_workers_option,
    load_model_option,
    report_skipped,
)
from dinofeat.cli.video import add_video_options, run_attention_video, run_embed_video, video_input
from dinofeat.data.collections import TAR_SUFFIXES, plan_units
from dinofeat.data.files import command_line_images, open_image
from dinofeat.data.preprocess import Size, pil_geometry, to_normalized_tensor
from dinofeat.features.image_files import drop_unreadable, extract_features
from dinofeat.features.loop import default_num_workers
from dinofeat.features.model_ids import model_id
from dinofeat.features.stores.arrays import FEATURE_SUFFIXES, save_features
from dinofeat.features.stores.shards import (
    DEFAULT_SHARD_SIZE,
    ExtractionSettings,
    extract_to_shards,
    print_report,
)
from dinofeat.hub.loading import load
from dinofeat.registry import list_models
from dinofeat.utils.distributed import pick_device
from dinofeat.utils.errors import ImageReadError
from dinofeat.viz.attention_figures import attention_grid, save_figure

MAX_ATTENTION_ROWS = 32


def add_parsers(subparsers: Any) -> None:
    models = subparsers.add_parser("models", help="list the model zoo")
    models.set_defaults(func=run_models)

    embed = subparsers.add_parser("embed",
                                  help="CLS features of images -> .npy, .safetensors or Parquet shards, "
                                       "or of a video's frames (with timestamps) -> .safetensors")
    embed.add_argument("paths", nargs="*",
                       help="image files, folders (searched recursively), WebDataset .tar shards, "
                            "or one video")
    embed.add_argument("--files-from", metavar="LIST", help="text file naming one image per line")
    embed.add_argument("-o", "--output", required=True,
                       help="output .npy (+ .txt file list) or .safetensors; a name without suffix is a "
                            "folder of Parquet shards (large collections: streamed, resumable, "
                            "one shard set per torchrun process)")
    embed.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE,
                       help=f"images per Parquet shard (default {DEFAULT_SHARD_SIZE}; "
                            "a .tar input is one shard)")
    embed.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    embed.add_argument("--batch-size", type=int, default=64)
    embed.add_argument("--size", type=int, nargs="+", metavar="PX",
                       help="crop size S (keeps the resize ratio) or H W (resize, no crop); default 224 crop")
    add_model_options(embed)
    add_workers_option(embed)
    add_skip_unreadable_option(embed)
    add_video_options(embed, fps=False)
    embed.set_defaults(func=run_embed)

    attention = subparsers.add_parser("attention", help="paper-style CLS attention figure, a row per image; "
                                                        "or a video's per-frame attention as a video")
    attention.add_argument("paths", nargs="+",
                           help="image files or folders (searched recursively), or one video")
    attention.add_argument("-o", "--output", required=True,
                           help="figure file (.png, .pdf, .svg); for a video, a .mp4 / .mkv / .mov")
    attention.add_argument("--size", type=int, nargs="+", metavar="PX",
                           help="images: H W (default 480 480); video frames: S (shorter side) or H W "
                                "(default their own size)")
    attention.add_argument("--threshold", type=float, default=0.6, help="attention mass kept by the masks")
    attention.add_argument("--mask", action="store_true",
                           help="video: the frame dimmed outside the --threshold mask, not the heat map")
    attention.add_argument("--batch-size", type=int, default=8, help="video frames per forward pass")
    add_video_options(attention)
    add_model_options(attention)
    attention.set_defaults(func=run_attention)


def _size(values: list[int] | None) -> Size | None:
    if not values:
        return None
    if min(values) <= 0:
        raise ValueError(f"--size values must be positive, got {values}")
    if len(values) == 1:
        return values[0]
    if len(values) == 2:
        return (values[0], values[1])
    raise ValueError(f"--size takes one value (crop) or two (H W), got {len(values)}")


def run_models(args: argparse.Namespace) -> int:
    for spec in list_models():
        knn = f"{spec.knn_top1:.1f}" if spec.knn_top1 is not None else "-"
        print(f"{spec.name:22s} dim {spec.embed_dim:5d}  k-NN {knn:>5s}  {spec.description}  "
              f"[licence: {spec.license}]")
    return 0


def run_embed(args: argparse.Namespace) -> int:
    size = _size(args.size)  # before any work, not after it
    clip = video_input(args.paths)
    if clip is not None:
        return run_embed_video(args, clip, size)
    output = Path(args.output)
    if output.is_dir() or not output.suffix:
        return _embed_to_shards(args, size)
    if output.suffix not in FEATURE_SUFFIXES:
        raise ValueError(f"-o must end in .npy or .safetensors, or name a folder (no suffix) for Parquet "
                         f"shards; got {output.name!r}")
    if args.files_from or any(Path(p).suffix.lower() in TAR_SUFFIXES for p in args.paths):
        raise ValueError("--files-from and .tar shards write Parquet shards: give -o a folder, not "
                         f"{Path(args.output).name!r}")
    files = command_line_images(args.paths)
    model = load_model_option(args)
    features = extract_features(model, files, batch_size=args.batch_size, num_workers=args.workers, size=size,
                                skip_unreadable=args.skip_unreadable, progress=not args.no_progress)
    assert features is not None  # single process
    if args.skip_unreadable:
        files, features, skipped = drop_unreadable(files, features)
        report_skipped(skipped)
        if not files:
            raise ImageReadError(f"none of the {len(skipped)} images could be read")
    out = save_features(args.output, features, [str(f) for f in files], model=model.name)
    print(f"wrote {tuple(features.shape)} features of {len(files)} images to {out}", file=sys.stderr)
    return 0


def _embed_to_shards(args: argparse.Namespace, size: Size | None) -> int:
    if not args.paths and not args.files_from:
        raise ValueError("give image files, folders, .tar shards or --files-from LIST")
    units = plan_units(args.paths, args.shard_size, args.files_from)
    # Under torchrun each process takes its own GPU; no process group is needed
    # (see dinofeat.features.stores.shards).
    device = args.device or str(pick_device("auto", int(os.environ.get("LOCAL_RANK", "0"))))
    model = load(args.model, arch=args.arch, device=device)
    identity = model_id(args.model)  # as indexes name it: `dinofeat index SHARDS` reuses it
    workers = default_num_workers() if args.workers is None else args.workers
    report = extract_to_shards(model, units, args.output, ExtractionSettings(identity, "cls", size),
                               batch_size=args.batch_size, num_workers=workers,
                               skip_unreadable=args.skip_unreadable, progress=not args.no_progress)
    report_skipped([Path(name) for name in report.skipped])
    print_report(report, args.output)
    return 0


def run_attention(args: argparse.Namespace) -> int:
    clip = video_input(args.paths)
    if clip is not None:
        return run_attention_video(args, clip)
    if args.size is not None and len(args.size) != 2:
        raise ValueError(f"--size for images takes H W, got {args.size}")
    files = command_line_images(args.paths)
    if len(files) > MAX_ATTENTION_ROWS:  # a row per image: beyond this the figure is unreadable
        raise ValueError(f"the attention figure takes at most {MAX_ATTENTION_ROWS} images, got {len(files)}")
    model = load_model_option(args)
    size = (args.size[0], args.size[1]) if args.size else (480, 480)
    rows = []
    for file in files:
        picture = pil_geometry(model.preprocess, size)(open_image(file))
        # The picture is already at its final size: give the network exactly those pixels.
        attn = model.cls_attention(to_normalized_tensor(picture, model.preprocess).unsqueeze(0))[0]
        rows.append((np.asarray(picture), attn))
    assert model.patch_size is not None  # cls_attention has already refused a CNN
    out = save_figure(attention_grid(rows, model.patch_size, args.threshold), args.output)
    heads, h, w = rows[0][1].shape
    print(f"wrote attention figure of {len(rows)} image(s) ({heads} heads, {h}x{w} patches) to {out}",
          file=sys.stderr)
    return 0
