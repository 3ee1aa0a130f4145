"""Serialising processes that extend the same output (an index, a feature file, a shard manifest).

Every read-modify-write of an output that several processes may extend at once runs under
:func:`exclusive`, an OS file lock (``filelock``: ``flock`` on POSIX, ``msvcrt`` on Windows) on a
small lock file beside the output. The kernel releases the lock when its holder dies, so a process
killed while holding it (SIGKILL, out of memory) never blocks the next one; the lock file itself
stays, empty and harmless.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

_log = logging.getLogger(__name__)

#: Seconds a writer waits for another one before giving up (an index save takes seconds, not hours).
DEFAULT_LOCK_TIMEOUT = 3600.0


class LockTimeoutError(RuntimeError):
    """Another process held an output's lock for longer than the timeout."""


def lock_path(target: str | os.PathLike[str]) -> Path:
    """The lock file guarding ``target`` (a file or a folder, existing or not): ``.<name>.lock`` beside it.

    Example:
        >>> lock_path("out/feats.npy").as_posix(), lock_path("out/index/").as_posix()
        ('out/.feats.npy.lock', 'out/.index.lock')
    """
    path = Path(target)
    if not path.name:  # "." or "/": name the folder itself
        path = Path(os.path.abspath(path))
    return path.parent / f".{path.name}.lock"


@contextmanager
def exclusive(target: str | os.PathLike[str], *, timeout: float = DEFAULT_LOCK_TIMEOUT) -> Iterator[None]:
    """Hold the lock of ``target`` (a file, or a folder such as an index) for the ``with`` block.

    Waits for the current holder (saying so once on the log) up to ``timeout`` seconds.

    Raises:
        LockTimeoutError: the lock was not obtained in time; the message names the lock file.
    """
    path = lock_path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        _log.warning("waiting for %s: another process is writing %s", path, target)
        try:
            lock.acquire(timeout=timeout)
        except Timeout:
            raise LockTimeoutError(f"{target} stayed locked by another process for {timeout:.0f} s "
                                   f"(lock file {path}); is another dinofeat run still writing it?") from None
    try:
        yield
    finally:
        lock.release()
