"""Video frames/s of `dinofeat pca CLIP.mp4` and `dinofeat attention CLIP.mp4` on a generated clip.

Each command runs end to end through ``dinofeat.cli.main`` (decode, resize-free 256 x 256 frames,
network, colouring, H.264 encode, atomic rename). The reference, in the same run, is the network
alone on the same frames already decoded and preprocessed (``cls_attention`` / ``patch_tokens``
on float batches of the same size), so ``pipeline / network`` says what decoding, colouring and
encoding cost on top of the forward. Commands and the reference are interleaved round-robin after
a warm-up; the median of the repeats is reported.

Usage: nice -n 10 python bench/bench_video.py [--frames 48] [--side 256] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from timing import interleaved_medians

from dinofeat.cli import main
from dinofeat.data.preprocess import to_normalized_tensor
from dinofeat.data.video import iter_frames
from dinofeat.hub.loading import load
from dinofeat.registry import BUNDLED_MODEL
from dinofeat.viz.video_writer import VideoWriter, output_codec


def _clip(path: Path, frames: int, side: int) -> Path:
    """Moving shapes over a gradient, side x side, 24 fps."""
    yy, xx = np.mgrid[:side, :side]
    base = np.stack([xx * 255 // side, yy * 255 // side, np.full_like(xx, 60)], axis=-1).astype(np.uint8)
    with VideoWriter(path, fps=24) as writer:
        for index in range(frames):
            frame = base.copy()
            x = (5 * index) % (side - side // 4)
            frame[side // 8: side // 8 + side // 4, x: x + side // 4] = 255
            disc = (yy - (3 * index) % side) ** 2 + (xx - side // 2) ** 2 < (side // 10) ** 2
            frame[disc] = (220, 30, 30)
            writer.write(frame)
    return path


def main_bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    folder = Path(tempfile.mkdtemp(prefix="bench_video_"))
    clip = _clip(folder / "clip.mp4", args.frames, args.side)
    model = load(BUNDLED_MODEL, device="cpu")
    pictures = [f.image for f in iter_frames(clip)]
    batch = torch.stack([to_normalized_tensor(p, model.preprocess) for p in pictures])
    common = ["-m", BUNDLED_MODEL, "--device", "cpu", "--batch-size", str(args.batch_size)]
    runs: dict[str, Callable[[], object]] = {
        "dinofeat attention CLIP.mp4": lambda: main(["attention", str(clip), "-o", str(folder / "a.mp4"),
                                                     *common]),
        "dinofeat pca CLIP.mp4": lambda: main(["pca", str(clip), "-o", str(folder / "p.mp4"), "--size",
                                               str(args.side), *common]),
        "network only: cls_attention": lambda: model.cls_attention(batch, batch_size=args.batch_size),
        "network only: patch_tokens": lambda: model.patch_tokens(batch, batch_size=args.batch_size),
    }
    fps = {name: args.frames / seconds for name, seconds in interleaved_medians(runs, args.repeats).items()}
    result = {
        "frames": args.frames, "side": args.side, "model": BUNDLED_MODEL, "codec": output_codec(),
        "threads": args.threads, "repeats": args.repeats,
        "frames_per_s": {name: round(value, 2) for name, value in fps.items()},
        "attention pipeline / network": round(fps["dinofeat attention CLIP.mp4"]
                                              / fps["network only: cls_attention"], 3),
        "pca pipeline / network": round(fps["dinofeat pca CLIP.mp4"] / fps["network only: patch_tokens"], 3),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main_bench()
