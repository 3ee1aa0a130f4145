"""When the Gram teacher is refreshed from the EMA teacher, as pure functions of the iteration counter.

Official rule (facts only): after the optimiser step and the EMA update of iteration ``it``, the Gram
teacher's backbone becomes the EMA teacher's when ``it + 1 >= it_first_update``, ``(it + 1)`` is a
multiple of ``update_frequency`` and fewer than ``max_updates`` refreshes happened so far (None: no
limit). A run resumed at ``start`` counts ``ceil((start + 1 - it_first_update) / update_frequency)``
earlier refreshes when ``0 < start`` and ``start >= it_first_update``, else none (capped here at
``max_updates``, which changes no decision). Separately, the EMA
teacher is copied in once *before* iteration ``it_load_ema_teacher`` when that is set (>= 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class GramRefresh:
    """The official ``gram`` refresh settings.

    Attributes:
        rep_update: Refresh at all (False: the Gram teacher stays what it was loaded as).
        it_first_update: First iteration count (``it + 1``) at which a refresh may happen.
        update_frequency: Refresh when ``it + 1`` is a multiple of this.
        max_updates: At most this many refreshes; None: no limit.
        it_load_ema_teacher: Copy the EMA teacher in before this iteration; -1: never.

    Example:
        >>> refresh = GramRefresh(it_first_update=1010, update_frequency=10, max_updates=3)
        >>> [it for it in range(1000, 1050) if refresh.due_after(it, refresh.updates_before(it))]
        [1009, 1019, 1029]
    """

    rep_update: bool = True
    it_first_update: int = 0
    update_frequency: int = 1
    max_updates: int | None = None
    it_load_ema_teacher: int = -1

    def __post_init__(self) -> None:
        if self.update_frequency < 1:
            raise ValueError(f"gram.update_frequency must be >= 1, got {self.update_frequency}")
        if self.max_updates is not None and self.max_updates < 0:
            raise ValueError(f"gram.max_updates must be >= 0 or None, got {self.max_updates}")

    def due_after(self, iteration: int, updates_done: int) -> bool:
        """Whether the Gram teacher is refreshed after iteration ``iteration`` (0-based), given the
        number of refreshes done so far."""
        count = iteration + 1
        return (self.rep_update and count >= self.it_first_update and count % self.update_frequency == 0
                and (self.max_updates is None or updates_done < self.max_updates))

    def updates_before(self, start: int) -> int:
        """Refreshes already done when a run resumes at iteration ``start`` (the official count, which a
        full loop from 0 reproduces when ``it_first_update`` is a multiple of ``update_frequency``)."""
        if not self.rep_update or start <= 0 or start < self.it_first_update:
            return 0
        done = math.ceil((start + 1 - self.it_first_update) / self.update_frequency)
        return done if self.max_updates is None else min(done, self.max_updates)

    def load_ema_before(self, iteration: int) -> bool:
        """Whether the EMA teacher is copied into the Gram teacher before iteration ``iteration``."""
        return self.it_load_ema_teacher >= 0 and iteration == self.it_load_ema_teacher
