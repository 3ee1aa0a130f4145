"""Replacing a file atomically: everything dinofeat writes goes through :func:`replace_atomically`.

The new content is written to a temporary file beside the target and renamed over it, so an
exception or a crash mid-write leaves the previous file (or no file) under the final name, never a
truncated one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def replace_atomically(write: Callable[[Path], object], path: str | os.PathLike[str], *,
                       durable: bool = False) -> Path:
    """Call ``write(temporary_path)``, then rename the temporary file to ``path``.

    The temporary file keeps ``path``'s suffix (``np.save`` and ``savefig`` choose the format from
    it) and is made world-readable like an ordinary file (``mkstemp`` and safetensors create 0600).

    Args:
        write: Writes the content to the path it is given.
        path: Final file; its folder is created if needed.
        durable: ``fsync`` the content before the rename (checkpoints), so a power loss cannot
            leave an empty file under the final name.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp()) / "hello.txt"
        >>> replace_atomically(lambda tmp: tmp.write_text("hi"), out).read_text()
        'hi'
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=target.suffix)
    os.close(fd)
    temporary = Path(name)
    try:
        write(temporary)
        os.chmod(temporary, 0o644)
        if durable:
            descriptor = os.open(temporary, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return target


def write_text_atomically(path: str | os.PathLike[str], text: str) -> Path:
    """Replace ``path`` with ``text`` (UTF-8) atomically."""
    return replace_atomically(lambda temporary: temporary.write_text(text, encoding="utf-8"), path)
