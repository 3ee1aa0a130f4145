"""The video forms of ``dinofeat attention | pca | embed`` (``CLIP.mp4`` in place of images).

The image commands dispatch here when their input has a video suffix; every check that needs no
model (the output name, the input file) runs before the model is loaded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dinofeat.data.preprocess import Size
from dinofeat.data.video import is_video_path, video_info
from dinofeat.dense.views import dense_size
from dinofeat.features.extractor import FeatureExtractor
from dinofeat.features.stores.arrays import check_feature_path, save_features
from dinofeat.features.video import embed_video
from dinofeat.hub.loading import load
from dinofeat.viz.video_writer import check_video_output, output_codec
from dinofeat.viz.videos import DEFAULT_FIT_FRAMES, attention_video, pca_video


def add_video_options(parser: argparse.ArgumentParser, *, fps: bool = True) -> None:
    """``--every`` (and ``--fps``) for commands that also take a video."""
    parser.add_argument("--every", type=int, default=1, metavar="N",
                        help="video input: keep every N-th frame (default every frame)")
    if fps:
        parser.add_argument("--fps", type=float, default=None,
                            help="video output frame rate (default: the input's divided by --every)")


def add_pca_video_options(parser: argparse.ArgumentParser) -> None:
    """The options ``dinofeat pca`` adds for a video."""
    add_video_options(parser)
    parser.add_argument("--fit-frames", type=int, default=DEFAULT_FIT_FRAMES, metavar="K",
                        help="video: fit the PCA on the first K kept frames (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=8, help="video frames per forward pass")


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


def run_pca_video(args: argparse.Namespace, clip: Path, size: Size) -> int:
    """``dinofeat pca CLIP -o OUT.mp4``: each frame beside its PCA colours, fitted on the first frames.

    Frames are resized as ``dinofeat pca`` resizes images (``size``: shorter side or H W, to whole
    patches, no crop).
    """
    check_video_output(args.output)
    _check_every(args.every)
    if args.fit_frames < 1:
        raise ValueError(f"--fit-frames must be >= 1, got {args.fit_frames}")
    if args.mask == "first-component":
        raise ValueError("a PCA video takes --mask none or attention (first-component would be refitted "
                         "per batch, so it could flicker)")
    info = video_info(clip)
    model = _model(args)
    frame_hw = dense_size(info.width, info.height, size, model.patch_size or 1)
    count = pca_video(model, clip, args.output, every=args.every, size=frame_hw, fps=args.fps,
                      fit_frames=args.fit_frames, mask=args.mask, batch_size=args.batch_size)
    print(f"wrote {count} frames of PCA (fitted on the first {min(count, args.fit_frames)}, mask: "
          f"{args.mask}, {output_codec()}) to {args.output}", file=sys.stderr)
    return 0
