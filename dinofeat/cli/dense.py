"""``dinofeat pca | similarity | match | segment``: figures of the patch tokens.

Every command checks its arguments and reads every image before it writes anything, and writes
its figure atomically.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dinofeat.cli.common import add_model_options, load_model_option
from dinofeat.cli.video import add_pca_video_options, run_pca_video, video_input
from dinofeat.data.files import command_line_images
from dinofeat.data.preprocess import Size
from dinofeat.dense.correspondences import grid_positions, mutual_nearest_neighbours
from dinofeat.dense.pca import MASK_METHODS, fit_pca, foreground_mask
from dinofeat.dense.segmentation import cluster_patches
from dinofeat.dense.similarity import point_similarity
from dinofeat.dense.views import DEFAULT_DENSE_SIZE, PatchView, prepare_view, token_stride, view_features
from dinofeat.features.extractor import FeatureExtractor
from dinofeat.viz.attention_figures import save_figure
from dinofeat.viz.dense_figures import match_figure, pca_figure, segment_figure, similarity_figure

#: A row (or column) per image: beyond this a figure is unreadable.
MAX_FIGURE_IMAGES = 16
DEFAULT_MATCHES = 40


def add_parsers(subparsers: Any) -> None:
    pca = subparsers.add_parser("pca", help="PCA of the patch tokens as RGB, fitted jointly over the images")
    _add_images(pca, "images")
    pca.add_argument("--mask", choices=MASK_METHODS, default="none",
                     help="fit and colour only the foreground: from the first component (DINOv2 demo) or "
                          "the CLS attention (60 %% mass of the head-mean map); default none")
    add_pca_video_options(pca)
    pca.set_defaults(func=run_pca)

    similarity = subparsers.add_parser("similarity", help="cosine similarity of query patches to every patch")
    _add_images(similarity, "image", many=False)
    similarity.add_argument("--point", type=float, nargs=2, action="append", required=True,
                            metavar=("X", "Y"),
                            help="query pixel in the original image (x right, y down); repeatable")
    similarity.add_argument("--target", nargs="+", default=[], metavar="IMAGE",
                            help="other images to compare with (files or folders)")
    similarity.set_defaults(func=run_similarity)

    match = subparsers.add_parser("match", help="best-buddy patch correspondences between two images")
    match.add_argument("image_a", help="first image")
    _add_images(match, "image_b", many=False)
    match.add_argument("--top", type=int, default=DEFAULT_MATCHES, help="draw the N strongest pairs")
    match.set_defaults(func=run_match)

    segment = subparsers.add_parser("segment", help="k-means parts of the patch tokens (joint)")
    _add_images(segment, "images")
    segment.add_argument("--k", type=int, required=True, help="number of parts")
    segment.add_argument("--seed", type=int, default=0, help="k-means seed")
    segment.set_defaults(func=run_segment)


def _add_images(parser: argparse.ArgumentParser, name: str, many: bool = True) -> None:
    if many:
        parser.add_argument(name, nargs="+", help="image files or folders (searched recursively)")
    else:
        parser.add_argument(name, help="image file")
    parser.add_argument("-o", "--output", required=True, help="figure file (.png, .pdf, .svg)")
    parser.add_argument("--size", type=int, nargs="+", metavar="PX", default=[DEFAULT_DENSE_SIZE],
                        help="shorter side S, aspect kept (default %(default)s), or H W; the whole image "
                             "is resized (no crop), to whole patches")
    add_model_options(parser)


def _dense_size(values: list[int]) -> Size:
    if min(values) <= 0 or len(values) > 2:
        raise ValueError(f"--size takes one positive value (shorter side) or two (H W), got {values}")
    return values[0] if len(values) == 1 else (values[0], values[1])


def _files(paths: list[str]) -> list[Path]:
    files = command_line_images(paths)
    if len(files) > MAX_FIGURE_IMAGES:
        raise ValueError(f"the figure takes at most {MAX_FIGURE_IMAGES} images, got {len(files)}")
    return files


def _views(model: FeatureExtractor, files: list[Path], size: Size) -> list[PatchView]:
    return [prepare_view(file, model.preprocess, token_stride(model), size) for file in files]


def _written(out: Path, what: str) -> int:
    print(f"wrote {what} to {out}", file=sys.stderr)
    return 0


def run_pca(args: argparse.Namespace) -> int:
    size = _dense_size(args.size)
    clip = video_input(args.images)
    if clip is not None:
        return run_pca_video(args, clip, size)
    files = _files(args.images)
    model = load_model_option(args)
    views = _views(model, files, size)
    outputs = ("patches", "attention") if args.mask == "attention" else ("patches",)
    per_view = view_features(model, views, outputs)
    tokens = [out["patches"] for out in per_view]
    masks = [_view_mask(args.mask, out) for out in per_view]
    pca = fit_pca(tokens, n_components=3, mask=[m for m in masks if m is not None] or None)
    rgb = [pca.to_rgb(t, m) for t, m in zip(tokens, masks, strict=True)]
    fig = pca_figure([v.picture for v in views], rgb, [f.name for f in files])
    return _written(save_figure(fig, args.output), f"PCA of {len(files)} image(s) (mask: {args.mask})")


def _view_mask(method: str, out: dict[str, torch.Tensor]) -> torch.Tensor | None:
    attention = out["attention"][None] if "attention" in out else None
    mask = foreground_mask(method, out["patches"][None], attention)
    return None if mask is None else mask[0]


def run_similarity(args: argparse.Namespace) -> int:
    if Path(args.image).is_dir():
        raise ValueError(f"the query must be one image file; {args.image} is a folder (see --target)")
    files = _files([args.image, *args.target])  # the query first
    size = _dense_size(args.size)
    model = load_model_option(args)
    views = _views(model, files, size)
    patches = [view["patches"] for view in view_features(model, views)]
    cells = [views[0].patch_of(x, y) for x, y in args.point]  # a point outside the image raises here
    maps = point_similarity(patches[0], cells, patches[1:])
    marks = [views[0].to_picture(x, y) for x, y in args.point]
    fig = similarity_figure([v.picture for v in views], maps, marks, [f.name for f in files],
                            [f"({x:g}, {y:g})" for x, y in args.point])
    return _written(save_figure(fig, args.output),
                    f"similarity maps of {len(cells)} point(s) over {len(files)} image(s)")


def run_match(args: argparse.Namespace) -> int:
    if args.top < 1:
        raise ValueError(f"--top must be >= 1, got {args.top}")
    files = command_line_images([args.image_a, args.image_b])
    size = _dense_size(args.size)
    model = load_model_option(args)
    views = _views(model, files, size)
    a, b = (view["patches"] for view in view_features(model, views))
    matches = mutual_nearest_neighbours(a, b)
    shown = matches.top(args.top)
    centres = [_patch_centres(grid_positions(indices, view.grid), view.patch_size)
               for indices, view in zip((shown.source, shown.target), views, strict=True)]
    title = (f"{len(shown)} of {len(matches)} best buddies ({files[0].name} - {files[1].name}), "
             "strongest in yellow")
    fig = match_figure(views[0].picture, views[1].picture, centres[0], centres[1],
                       shown.similarity.cpu().numpy(), title)
    return _written(save_figure(fig, args.output), f"{len(shown)} of {len(matches)} best-buddy matches")


def _patch_centres(cells: torch.Tensor, patch_size: int) -> np.ndarray:
    """(M, 2) (row, col) patches -> (M, 2) (x, y) pixel centres in imshow coordinates."""
    rows_cols = cells.cpu().numpy().astype(float)
    return np.stack([(rows_cols[:, 1] + 0.5) * patch_size - 0.5, (rows_cols[:, 0] + 0.5) * patch_size - 0.5],
                    axis=1)


def run_segment(args: argparse.Namespace) -> int:
    if args.k < 1:
        raise ValueError(f"--k must be >= 1, got {args.k}")
    files = _files(args.images)
    size = _dense_size(args.size)
    model = load_model_option(args)
    views = _views(model, files, size)
    patches = [view["patches"] for view in view_features(model, views)]
    total = sum(view.grid[0] * view.grid[1] for view in views)
    if args.k > total:
        raise ValueError(f"--k {args.k} is larger than the number of patches ({total}) of the "
                         f"{len(files)} image(s) at --size {' '.join(map(str, args.size))}")
    labels = cluster_patches(patches, args.k, seed=args.seed)
    fig = segment_figure([v.picture for v in views], labels, args.k, [f.name for f in files])
    return _written(save_figure(fig, args.output), f"{args.k} parts over {len(files)} image(s)")
