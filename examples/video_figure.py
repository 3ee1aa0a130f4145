"""A clip panned across an image, run through `dinofeat attention`, `attention --mask` and `pca`; a few
frames of each output side by side in one PNG (docs/dense_video.png).

    python examples/video_figure.py examples/images/cat.jpg -o docs/dense_video.png

The clip (48 frames at 24 fps, 320 x 240, a 0.6x window panning left to right) is written next to the
figure's outputs in a temporary folder; the three videos come from the real commands (bundled model).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from dinofeat.cli import main as dinofeat_main
from dinofeat.data.files import open_image
from dinofeat.data.video import iter_frames
from dinofeat.viz.attention_figures import save_figure
from dinofeat.viz.video_writer import VideoWriter

FRAMES, SIDE = 48, (240, 320)
SHOWN = (0, 16, 32, 47)


def pan_clip(image: Image.Image, path: Path) -> Path:
    """FRAMES frames of a window of 0.6x the image panning left to right, resized to SIDE."""
    width, height = image.size
    window = (int(width * 0.6), int(height * 0.6))
    top = (height - window[1]) // 2
    with VideoWriter(path, fps=24) as writer:
        for index in range(FRAMES):
            left = (width - window[0]) * index // (FRAMES - 1)
            crop = image.crop((left, top, left + window[0], top + window[1]))
            writer.write(np.asarray(crop.resize((SIDE[1], SIDE[0]), Image.Resampling.BICUBIC)))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image")
    parser.add_argument("-o", "--output", default="dense_video.png")
    args = parser.parse_args()
    from matplotlib.figure import Figure

    folder = Path(tempfile.mkdtemp(prefix="dinofeat_video_"))
    clip = pan_clip(open_image(args.image), folder / "pan.mp4")
    commands = {  # row title -> (output, command after the clip)
        "dinofeat attention": (folder / "attention.mp4", ["attention"]),
        "dinofeat attention --mask": (folder / "mask.mp4", ["attention", "--mask"]),
        "dinofeat pca (right half)": (folder / "pca.mp4", ["pca", "--size", "240"]),
    }
    runs = {"clip": clip}
    for title, (out, command) in commands.items():
        assert dinofeat_main([command[0], str(clip), "-o", str(out), *command[1:]]) == 0
        runs[title] = out
    fig = Figure(figsize=(2.4 * len(SHOWN), 2.0 * len(runs)), layout="constrained")
    axes = fig.subplots(len(runs), len(SHOWN), squeeze=False)
    for row, (title, video) in zip(axes, runs.items(), strict=True):
        frames = {f.index: np.asarray(f.image) for f in iter_frames(video) if f.index in SHOWN}
        for axis, index in zip(row, SHOWN, strict=True):
            picture = frames[index]
            axis.imshow(picture[:, picture.shape[1] // 2:] if title.startswith("dinofeat pca") else picture)
            axis.set_axis_off()
            axis.set_title(f"{title}, frame {index}" if index == SHOWN[0] else f"frame {index}", fontsize=8)
    print(f"wrote {save_figure(fig, args.output)}")


if __name__ == "__main__":
    main()
