"""The video forms of ``dinofeat attention | embed`` (``CLIP.mp4`` in place of images).

The image commands dispatch here when their input has a video suffix; every check that needs no
model (the output name, the input file) runs before the model is loaded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dinofeat.extractor import FeatureExtractor
from dinofeat.feature_files import check_feature_path, save_features
from dinofeat.loading import load
from dinofeat.video import check_video_output, is_video_path, output_codec
from dinofeat.video_features import attention_video, embed_video


def add_video_options(parser: argparse.ArgumentParser, *, fps: bool = True) -> None:
    """``--every`` (and ``--fps``) for commands that also take a video."""
    parser.add_argument("--every", type=int, default=1, metavar="N",
                        help="video input: keep every N-th frame (default every frame)")
    if fps:
        parser.add_argument("--fps", type=float, default=None,
                            help="video output frame rate (default: the input's divided by --every)")


def video_input(paths: list[str]) -> Path | None:
    """The one video among ``paths``, None if they are all images; a video among images is refused."""
    videos = [p for p in paths if is_video_path(p)]
    if not videos:
        return None
    if len(paths) > 1:
        raise ValueError(f"a video is processed alone, got {len(paths)} inputs: {', '.join(paths)}")
    clip = Path(videos[0])
    if not clip.is_file():
        raise FileNotFoundError(f"video file not found: {clip}")
    return clip


def frame_size(values: list[int] | None) -> int | tuple[int, int] | None:
    """``--size`` for video frames: none (own size), S (shorter side) or H W."""
    if not values:
        return None
    if min(values) <= 0 or len(values) > 2:
        raise ValueError(f"--size takes S (shorter side) or H W, positive, got {values}")
    return values[0] if len(values) == 1 else (values[0], values[1])


def _model(args: argparse.Namespace) -> FeatureExtractor:
    return load(args.model, arch=args.arch, device=args.device)


def _check_every(every: int) -> None:
    if every < 1:
        raise ValueError(f"--every must be >= 1, got {every}")


def run_attention_video(args: argparse.Namespace, clip: Path) -> int:
    """``dinofeat attention CLIP -o OUT.mp4``: the mean-attention heat map (or ``--mask``) per frame."""
    check_video_output(args.output)
    _check_every(args.every)
    size = frame_size(args.size)
    model = _model(args)
    threshold = args.threshold if args.mask else None
    count = attention_video(model, clip, args.output, every=args.every, size=size, fps=args.fps,
                            threshold=threshold, batch_size=args.batch_size)
    kind = f"{threshold:.0%} attention masks" if threshold is not None else "mean attention"
    print(f"wrote {count} frames of {kind} ({output_codec()}) to {args.output}", file=sys.stderr)
    return 0


def run_embed_video(args: argparse.Namespace, clip: Path, size: int | tuple[int, int] | None) -> int:
    """``dinofeat embed CLIP -o frames.safetensors``: a CLS row and a timestamp per kept frame."""
    out = check_feature_path(args.output)
    if out.suffix != ".safetensors":
        raise ValueError(f"video features keep each frame's timestamp: write a .safetensors file, "
                         f"got {out.name!r}")
    _check_every(args.every)
    model = _model(args)
    frames = embed_video(model, clip, every=args.every, size=size, batch_size=args.batch_size)
    save_features(out, frames.features, [str(clip)] * len(frames.times), model=model.name,
                  timestamps=frames.times, frame_indices=frames.indices)
    print(f"wrote {tuple(frames.features.shape)} features of {len(frames.times)} frames of {clip} "
          f"to {out}", file=sys.stderr)
    return 0
