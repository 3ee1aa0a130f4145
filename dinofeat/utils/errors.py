"""dinofeat's exception types: each names the culprit (a key, a file, a model name)."""

from __future__ import annotations


class DinofeatError(Exception):
    """Base class of dinofeat's own errors."""


class WeightsMismatchError(DinofeatError, ValueError):
    """A state dict does not fit the architecture: missing, unexpected or mis-shaped keys."""


class ImageReadError(DinofeatError, ValueError):
    """An image file could not be opened or decoded."""


class OfflineModelError(DinofeatError, RuntimeError):
    """The weights are neither cached nor downloadable because the Hub is offline."""


class SetupError(DinofeatError, RuntimeError):
    """The machine or launcher cannot run what was asked: no CUDA device, a malformed torchrun environment."""


class HubUploadError(DinofeatError, RuntimeError):
    """Uploading a model folder to the Hugging Face Hub failed (offline, no token, HTTP error)."""


class GatedModelError(DinofeatError, RuntimeError):
    """A gated Hub repository (e.g. the DINOv3 weights) refused the download: no token, or no access yet."""


class VideoReadError(DinofeatError, ValueError):
    """A video file could not be opened or decoded: unknown container, corrupt or truncated."""


class MissingExtraError(SetupError, ImportError):
    """An optional dependency is not installed; the message names the ``pip install 'dinofeat[extra]'``."""
