"""Video files in and out with PyAV (FFmpeg's libraries, bundled in the ``av`` wheel).

Decoding streams: :func:`iter_frames` holds one decoded frame at a time, never the clip. Encoding
streams too: :class:`VideoWriter` muxes each frame as it comes into a temporary file beside the
target and renames it over the target only when the whole clip is written, so a failure (a corrupt
input met half-way, an interrupt) leaves no partial video under the final name. Output is H.264
(``libx264``, preset veryfast, yuv420p) when the bundled FFmpeg has it, else MPEG-4 part 2
(:func:`output_codec`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from PIL import Image

from dinofeat.errors import SetupError, VideoReadError

#: Suffixes read as videos (anything FFmpeg demuxes may be passed to :func:`iter_frames` itself).
VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts"})
#: Containers :class:`VideoWriter` writes.
OUTPUT_SUFFIXES = (".mp4", ".mkv", ".mov")
PREFERRED_CODECS = ("libx264", "mpeg4")


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


def _pyav() -> Any:
    """The ``av`` module, imported on first use so that dinofeat imports without it."""
    try:
        import av
    except ImportError as error:
        raise SetupError(f"video needs PyAV (pip install av): {error}") from None
    return av


def is_video_path(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` has a video suffix (:data:`VIDEO_SUFFIXES`)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def _open_input(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"video file not found: {path}")
    av = _pyav()
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
    av = _pyav()
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


def output_codec() -> str:
    """The encoder :class:`VideoWriter` uses: H.264 (libx264) if PyAV's FFmpeg has it, else mpeg4."""
    av = _pyav()
    for name in PREFERRED_CODECS:
        try:
            av.codec.Codec(name, "w")
        except (av.FFmpegError, ValueError):
            continue
        return name
    raise RuntimeError(f"PyAV's FFmpeg has none of the encoders {', '.join(PREFERRED_CODECS)}")


def check_video_output(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path if :class:`VideoWriter` can write its container, else ValueError."""
    out = Path(path)
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ValueError(f"video output must end in {', '.join(OUTPUT_SUFFIXES)}, got {out.name!r}")
    return out


class VideoWriter:
    """Encode RGB frames to a video file, streaming, replacing ``path`` only once complete.

    Use as a context manager: leaving the block normally finishes the file and renames it into
    place; an exception deletes the temporary file and leaves ``path`` as it was.

    Args:
        path: Output ``.mp4``, ``.mkv`` or ``.mov``.
        fps: Frame rate.
        codec: Encoder name (default :func:`output_codec`).

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp()) / "clip.mp4"
        >>> with VideoWriter(out, fps=10) as writer:
        ...     for _ in range(3):
        ...         writer.write(np.zeros((32, 48, 3), np.uint8))
        >>> video_info(out).frames, video_info(out).width
        (3, 48)
    """

    def __init__(self, path: str | os.PathLike[str], fps: float | Fraction, codec: str | None = None) -> None:
        self.path = check_video_output(path)
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.fps = Fraction(fps).limit_denominator(1001)
        self.codec = codec or output_codec()
        self.frames = 0
        self._temporary: Path | None = None
        self._container: Any = None
        self._stream: Any = None
        self._av: Any = None

    def __enter__(self) -> VideoWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.",
                                    suffix=self.path.suffix)
        os.close(fd)
        self._temporary = Path(name)
        self._av = _pyav()
        self._container = self._av.open(name, "w")
        return self

    def write(self, frame: np.ndarray) -> None:
        """Append one uint8 (H, W, 3) frame; every frame must have the first one's size.

        yuv420p needs even sides: an odd last row / column is dropped.
        """
        if self._container is None:
            raise RuntimeError("VideoWriter.write outside its `with` block")
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"frames must be uint8 (H, W, 3), got {frame.dtype} {frame.shape}")
        frame = frame[: frame.shape[0] // 2 * 2, : frame.shape[1] // 2 * 2]
        if self._stream is None:
            # x264's "veryfast" preset: 3x faster than its default here, files no larger for these maps.
            options = {"preset": "veryfast"} if self.codec == "libx264" else {}
            self._stream = self._container.add_stream(self.codec, rate=self.fps, options=options)
            self._stream.height, self._stream.width = frame.shape[:2]
            self._stream.pix_fmt = "yuv420p"
        elif (frame.shape[0], frame.shape[1]) != (self._stream.height, self._stream.width):
            raise ValueError(f"frame {self.frames} is {frame.shape[1]}x{frame.shape[0]}, the video "
                             f"{self._stream.width}x{self._stream.height}")
        picture = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        self._container.mux(self._stream.encode(picture))
        self.frames += 1

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        assert self._temporary is not None
        try:
            if kind is None:
                self._finish(self._temporary)
            else:  # the block's own exception is the one to report
                with contextlib.suppress(self._av.FFmpegError, OSError):
                    self._container.close()
        finally:
            self._temporary.unlink(missing_ok=True)

    def _finish(self, temporary: Path) -> None:
        if self._stream is None:
            with contextlib.suppress(self._av.FFmpegError, OSError):
                self._container.close()
            raise ValueError(f"no frames to write to {self.path}")
        self._container.mux(self._stream.encode())  # flush the encoder
        self._container.close()
        os.chmod(temporary, 0o644)
        os.replace(temporary, self.path)
