"""Reading videos with PyAV (FFmpeg's libraries, bundled in the ``av`` wheel): :func:`iter_frames`
streams, holding one decoded frame at a time, never the clip."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from itertools import islice
from pathlib import Path
from typing import Any

from PIL import Image

from dinofeat.utils.errors import VideoReadError
from dinofeat.utils.extras import require

#: Suffixes read as videos (anything FFmpeg demuxes may be passed to :func:`iter_frames` itself).
VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts"})


@dataclass(frozen=True)
class VideoFrame:
    """One decoded frame.

    Attributes:
        index: Position in the clip's decoded frames (0-based, counting frames ``every`` skipped).
        time: Presentation time in seconds.
        image: The RGB picture (resized if asked).
    """

    index: int
    time: float
    image: Image.Image


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about a clip's first video stream (``frames`` 0 when it does not say)."""

    width: int
    height: int
    fps: Fraction
    frames: int
    codec: str


def pyav() -> Any:
    """The ``av`` module, imported on first use so that dinofeat imports without it."""
    return require("av", "video", "video")


def is_video_path(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` has a video suffix (:data:`VIDEO_SUFFIXES`)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def _open_input(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"video file not found: {path}")
    av = pyav()
    try:
        container = av.open(str(path))
    except av.FFmpegError as error:
        raise VideoReadError(f"cannot read video {path}: not a video container FFmpeg knows, or damaged "
                             f"({error.strerror})") from None
    if not container.streams.video:
        container.close()
        raise VideoReadError(f"{path} has no video stream")
    return container


def video_info(path: str | os.PathLike[str]) -> VideoInfo:
    """Size, frame rate and frame count of a clip's first video stream, from its header.

    Raises:
        FileNotFoundError: no such file.
        VideoReadError: not a readable video; the message names the file.
    """
    with _open_input(Path(path)) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or Fraction(0)
        return VideoInfo(stream.codec_context.width, stream.codec_context.height, Fraction(rate),
                         int(stream.frames or 0), stream.codec_context.name)


def iter_frames(path: str | os.PathLike[str], *, every: int = 1,
                size: int | tuple[int, int] | None = None) -> Iterator[VideoFrame]:
    """Decode a clip frame by frame, keeping every ``every``-th frame (the first, then each N-th).

    Args:
        path: Video file.
        every: Keep frames 0, N, 2N, ...
        size: None for the frame's own size; an int ``S`` to resize the shorter side to S (aspect
            kept); ``(H, W)`` to resize to exactly that. Bicubic, as the image preprocessing.

    Yields:
        :class:`VideoFrame` in presentation order.

    Raises:
        FileNotFoundError: no such file.
        VideoReadError: an unknown container, no video stream, a corrupt packet, or fewer frames
            than the header announces (a truncated file); the message names the file.
    """
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    file = Path(path)
    av = pyav()
    with _open_input(file) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        announced = int(stream.frames or 0)
        decoded = 0
        try:
            for frame in container.decode(stream):
                if decoded % every == 0:
                    image = _resized(frame.to_image(), size)
                    yield VideoFrame(decoded, float(frame.time or 0.0), image)
                decoded += 1
        except av.FFmpegError as error:
            raise VideoReadError(f"video {file} is corrupt or truncated after frame {decoded} "
                                 f"({error.strerror})") from None
        if decoded == 0:
            raise VideoReadError(f"video {file} has no decodable frame")
        if announced and decoded < announced:
            raise VideoReadError(f"video {file} is truncated: decoded {decoded} of the {announced} frames "
                                 "its header announces")


def _resized(image: Image.Image, size: int | tuple[int, int] | None) -> Image.Image:
    if size is None:
        return image
    if isinstance(size, int):
        width, height = image.size
        scale = size / min(width, height)
        target = (max(1, round(width * scale)), max(1, round(height * scale)))
    else:
        target = (size[1], size[0])
    return image if target == image.size else image.resize(target, Image.Resampling.BICUBIC)


def frame_batches(clip: str | os.PathLike[str], batch_size: int, *, every: int = 1,
                  size: int | tuple[int, int] | None = None) -> Iterator[list[VideoFrame]]:
    """:func:`iter_frames` in lists of ``batch_size`` frames (the last one shorter)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    frames = iter_frames(clip, every=every, size=size)
    while batch := list(islice(frames, batch_size)):
        yield batch
