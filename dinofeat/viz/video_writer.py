"""Writing videos with PyAV, streaming: :class:`VideoWriter` muxes each frame as it comes into a
temporary file beside the target and renames it over the target only when the whole clip is written,
so a failure (a corrupt input met half-way, an interrupt) leaves no partial video under the final
name. Output is H.264 (``libx264``, preset veryfast, yuv420p) when the bundled FFmpeg has it, else
MPEG-4 part 2 (:func:`output_codec`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from dinofeat.data.video import pyav

#: Containers :class:`VideoWriter` writes.
OUTPUT_SUFFIXES = (".mp4", ".mkv", ".mov")


PREFERRED_CODECS = ("libx264", "mpeg4")


def output_codec() -> str:
    """The encoder :class:`VideoWriter` uses: H.264 (libx264) if PyAV's FFmpeg has it, else mpeg4."""
    av = pyav()
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
        self._av = pyav()
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
