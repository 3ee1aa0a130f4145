"""The model the demo uses, and zoo models loaded on request in a background thread.

While a model loads, the previous one keeps answering; the page polls :meth:`ModelSlot.status`
for the progress message, and a failed load (offline, unknown name) becomes the status's error
instead of an exception.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from dinofeat.features.extractor import FeatureExtractor
from dinofeat.registry import ZOO, get_spec

Loader = Callable[[str], FeatureExtractor]


@dataclass(frozen=True)
class ModelStatus:
    """What the page shows about models.

    Attributes:
        active: The model analyses use now.
        state: ``ready``, ``loading`` (``requested`` is loading) or ``error`` (the last request failed).
        requested: The model asked for last.
        message: A sentence for the page.
    """

    active: str
    state: str
    requested: str
    message: str

    def to_json(self) -> dict[str, str]:
        return asdict(self)


class ModelSlot:
    """Loaded models by name, one of them active; only the start model and the active one are held.

    Args:
        first: Name of the model loaded (synchronously) at start.
        loader: ``name -> FeatureExtractor`` (``dinofeat.load`` with the device bound).
    """

    def __init__(self, first: str, loader: Loader) -> None:
        self._loader = loader
        self._lock = threading.Lock()
        self._models = {first: loader(first)}
        self._first = first
        self._status = ModelStatus(first, "ready", first, f"{first} ready")
        self._started = 0.0

    def choices(self) -> list[str]:
        """The names the page offers: the start model, then the zoo."""
        return [self._first, *(name for name in ZOO if name != self._first)]

    def active(self) -> tuple[str, FeatureExtractor]:
        with self._lock:
            name = self._status.active
            return name, self._models[name]

    def status(self) -> ModelStatus:
        with self._lock:
            return self._status_locked()

    def _status_locked(self) -> ModelStatus:
        status = self._status
        if status.state != "loading":
            return status
        elapsed = time.monotonic() - self._started
        return ModelStatus(status.active, "loading", status.requested,
                           f"loading {status.requested} (fetching or reading its weights): "
                           f"{elapsed:.0f} s; {status.active} answers meanwhile")

    def request(self, name: str) -> ModelStatus:
        """Make ``name`` active: at once if loaded, else after a background load."""
        with self._lock:
            if self._status.state == "loading":
                if name == self._status.requested:
                    return self._status_locked()
                return ModelStatus(self._status.active, "loading", self._status.requested,
                                   f"still loading {self._status.requested}; ask for {name} when it is done")
            if name in self._models:
                self._status = ModelStatus(name, "ready", name, f"{name} ready")
                return self._status
            if name not in ZOO:
                try:
                    get_spec(name)
                except KeyError as error:
                    message = error.args[0] if error.args else str(error)
                    self._status = ModelStatus(self._status.active, "error", name, str(message))
                    return self._status
            self._status = ModelStatus(self._status.active, "loading", name, "")
            self._started = time.monotonic()
            threading.Thread(target=self._load, args=(name,), name=f"demo-load-{name}", daemon=True).start()
            return self._status_locked()

    def _load(self, name: str) -> None:
        try:
            model = self._loader(name)
        except Exception as error:  # any failure is shown in the page, never raised into the server
            with self._lock:
                self._status = ModelStatus(self._status.active, "error", name,
                                           f"could not load {name}: {type(error).__name__}: {error}")
            return
        with self._lock:
            # Hold the start model and the active one only: zoo models reach gigabytes.
            self._models = {self._first: self._models[self._first], name: model}
            self._status = ModelStatus(name, "ready", name, f"{name} ready")
