"""Preprocessing as data: the evaluation transform of an RGB model and the per-band normalisation of a
C-band model.

These dataclasses are shared by the data layer (which applies them), the registry, the Hub format
(``config.json``) and the trainer's export. They round-trip through plain JSON dictionaries; unknown
keys are an error, never silently ignored (:func:`check_keys`).

Example:
    >>> norm = BandNormalization(channels=2, mean=(1.0, 2.0), std=(2.0, 4.0))
    >>> norm.apply(torch.tensor([[[[3.0]], [[6.0]]]])).flatten().tolist()
    [1.0, 1.0]
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import torch

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)


IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BandNormalization:
    """Per-band preprocessing of a C-band model, applied in this order.

    Attributes:
        channels: C, the number of bands the model takes.
        mean: Per-band mean after clipping and stretching (what ``dinofeat-train stats`` measures).
        std: Per-band standard deviation, likewise.
        clip_low: Per-band lower clip values (e.g. a low percentile), or None.
        clip_high: Per-band upper clip values, or None.
        stretch: ``"arcsinh"`` maps x -> asinh(x / arcsinh_scale), the usual stretch of astronomical
            fluxes (bright cores and faint outskirts both kept); ``"none"`` leaves values linear.
        arcsinh_scale: Softening of the arcsinh stretch (about the noise level).
    """

    channels: int
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    clip_low: tuple[float, ...] | None = None
    clip_high: tuple[float, ...] | None = None
    stretch: Literal["none", "arcsinh"] = "none"
    arcsinh_scale: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.channels, int) or self.channels < 1:
            raise ValueError(f"BandNormalization.channels must be a positive integer, got {self.channels!r}")
        for name in ("mean", "std", "clip_low", "clip_high"):
            values = getattr(self, name)
            if values is not None and len(values) != self.channels:
                raise ValueError(
                    f"BandNormalization.{name} has {len(values)} values for {self.channels} bands")
        if self.std is not None and min(self.std) <= 0:
            raise ValueError(f"BandNormalization.std must be positive, got {self.std}")
        if self.stretch not in ("none", "arcsinh") or self.arcsinh_scale <= 0:
            raise ValueError(f"BandNormalization stretch must be 'none' or 'arcsinh' with arcsinh_scale > 0, "
                             f"got {self.stretch!r}, {self.arcsinh_scale}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BandNormalization:
        values = dict(data)
        for key in ("mean", "std", "clip_low", "clip_high"):
            if values.get(key) is not None:
                values[key] = tuple(float(v) for v in values[key])
        return cls(**values)

    def _per_band(self, values: tuple[float, ...], like: torch.Tensor) -> torch.Tensor:
        return torch.tensor(values, dtype=like.dtype, device=like.device).view(-1, 1, 1)

    def stretched(self, bands: torch.Tensor) -> torch.Tensor:
        """Clip and stretch (C, H, W) or (N, C, H, W) float bands (no standardisation)."""
        if self.clip_low is not None:
            bands = torch.maximum(bands, self._per_band(self.clip_low, bands))
        if self.clip_high is not None:
            bands = torch.minimum(bands, self._per_band(self.clip_high, bands))
        if self.stretch == "arcsinh":
            bands = torch.asinh(bands / self.arcsinh_scale)
        return bands

    def standardized(self, bands: torch.Tensor) -> torch.Tensor:
        """(x - mean) / std per band; the identity when no statistics are set."""
        if self.mean is not None:
            bands = bands - self._per_band(self.mean, bands)
        if self.std is not None:
            bands = bands / self._per_band(self.std, bands)
        return bands

    def apply(self, bands: torch.Tensor) -> torch.Tensor:
        """Clip, stretch and standardise."""
        return self.standardized(self.stretched(bands))


@dataclass(frozen=True)
class PreprocessConfig:
    """Evaluation preprocessing: resize the shorter side, centre-crop, normalise.

    The default is the official DINO evaluation transform: bicubic resize of the shorter
    side to 256, centre crop 224, ImageNet mean and std. A C-band model has ``bands`` (its
    per-band normalisation, which replaces ``mean`` / ``std``) and takes band arrays, not RGB images.
    """

    resize: int = 256
    crop: int = 224
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    bands: BandNormalization | None = None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if self.bands is None:
            del data["bands"]  # RGB configs keep their published form
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessConfig:
        check_keys(cls, data, "preprocess")
        values = dict(data)
        for key in ("mean", "std"):
            if key in values:
                values[key] = tuple(float(v) for v in values[key])
        if values.get("bands") is not None:
            values["bands"] = BandNormalization.from_dict(values["bands"])
        return cls(**values)


def check_keys(cls: type, data: dict[str, Any], what: str) -> None:
    fields = dataclasses.fields(cls)
    allowed = {f.name for f in fields}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValueError(f"unknown {what} config keys {unknown}; allowed: {sorted(allowed)}")
    required = [f.name for f in fields
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in data]
    if missing:
        raise ValueError(f"{what} config lacks {missing} (required: {required})")
