"""Small clips made in the test with PyAV: shapes moving over a dark background."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from dinofeat.viz.video_writer import VideoWriter


def moving_shapes(index: int, height: int = 64, width: int = 64) -> np.ndarray:
    """Frame ``index``: a white square moving right and a red disc moving down."""
    frame = np.full((height, width, 3), 20, np.uint8)
    x = (3 * index) % (width - 16)
    frame[8:24, x:x + 16] = 255
    yy, xx = np.mgrid[:height, :width]
    cy = (2 * index) % (height - 20) + 10
    frame[(yy - cy) ** 2 + (xx - width // 2) ** 2 < 64] = (220, 30, 30)
    return frame


def write_clip(path: Path, frames: int = 12, size: tuple[int, int] = (64, 64), fps: int = 24) -> Path:
    """An H.264 (or mpeg4) clip written by dinofeat's own writer."""
    with VideoWriter(path, fps=fps) as writer:
        for index in range(frames):
            writer.write(moving_shapes(index, *size))
    return path


def write_faststart_clip(path: Path, frames: int = 12, fps: int = 24) -> Path:
    """An MP4 with its index (moov) before the data, so that a cut file still opens."""
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        for index in range(frames):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(moving_shapes(index), format="rgb24")))
        container.mux(stream.encode())
    return path
