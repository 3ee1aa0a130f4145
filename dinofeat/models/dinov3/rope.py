"""DINOv3's rotary position encoding (RoPE), computed for any patch layout.

Written from the published description of the official model (facts, not code): each
head's channels are split into a y half and an x half; a patch at normalised position
``c`` in [-1, 1] is rotated by the angles ``2*pi*c / period`` for ``D_head / 4`` periods
per axis, laid out ``[y-angles | x-angles]`` and tiled twice ("rotate half" pairing of
channel ``j`` with ``j + D_head / 2``). CLS and storage tokens are not rotated.

The coordinates are built from patch *centres* in patch units, so a caller with another
patch layout (overlapping patches, a sliding window) passes its own centres and extent;
the ordinary grid is ``centres = i + 0.5`` over an extent of ``h`` (or ``w``) patches.

The periods are a persistent buffer: a model loaded from a checkpoint uses the periods the
file holds (the released checkpoints store bf16-rounded values) and casting the model to
another dtype leaves them as they are.

Training augments the coordinates (train mode only, the official order): a shift uniform in
``[-s, s]`` added per axis, a jitter log-uniform in ``[1/j, j]`` multiplied per axis, a rescale
log-uniform in ``[1/r, r]`` multiplying both axes; each is drawn from torch's generator in the
RoPE dtype, anew on every call (the model calls once per block and crop group).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

Normalize = Literal["min", "max", "separate"]

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def rope_periods(head_dim: int, *, base: float | None = None, min_period: float | None = None,
                 max_period: float | None = None) -> torch.Tensor:
    """The ``head_dim / 4`` RoPE periods in float32, geometric between their bounds.

    With ``base``: ``base ** (4 i / head_dim)``, from 1 up to just below ``base``. With
    ``min_period`` / ``max_period``: geometric from ``min_period`` to ``max_period`` inclusive.

    Example:
        >>> rope_periods(16, base=100.0)
        tensor([ 1.0000,  3.1623, 10.0000, 31.6228])
    """
    count = head_dim // 4
    if base is not None:
        return base ** (2 * torch.arange(count, dtype=torch.float32) / (head_dim // 2))
    if min_period is None or max_period is None:
        raise ValueError("rope_periods needs base, or both min_period and max_period")
    ratio = max_period / min_period
    return ratio ** torch.linspace(0, 1, count, dtype=torch.float32) / ratio * max_period


def released_periods(head_dim: int, base: float = 100.0) -> torch.Tensor:
    """The periods the released DINOv3 checkpoints store: the float32 values rounded to bfloat16.

    timm and HF transformers weights carry no periods; these are what the official model
    computes with once it has loaded a released ``.pth``.
    """
    return rope_periods(head_dim, base=base).bfloat16().float()


def grid_centres(h: int, w: int, *, device: torch.device | None = None,
                 dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Patch centres (in patch units) of an ``h x w`` grid of non-overlapping patches: ``i + 0.5``."""
    return (torch.arange(0.5, h, device=device, dtype=dtype),
            torch.arange(0.5, w, device=device, dtype=dtype))


def normalized_coords(centres_y: torch.Tensor, centres_x: torch.Tensor, extent: tuple[float, float],
                      normalize: Normalize = "separate") -> torch.Tensor:
    """(n_y * n_x, 2) patch coordinates (y, x) in [-1, 1], row-major over the patches.

    Args:
        centres_y: Patch-centre rows in patch units, e.g. from :func:`grid_centres`.
        centres_x: Patch-centre columns in patch units.
        extent: Image height and width in patch units (``(h, w)`` for the ordinary grid).
        normalize: Divide each axis by its own extent (``"separate"``), or both by the
            longer (``"max"``) or the shorter (``"min"``) one.
    """
    if normalize == "separate":
        scale_y, scale_x = extent
    elif normalize == "max":
        scale_y = scale_x = max(extent)
    elif normalize == "min":
        scale_y = scale_x = min(extent)
    else:
        raise ValueError(f"unknown RoPE coordinate normalisation {normalize!r}")
    coords = torch.stack(torch.meshgrid(centres_y / scale_y, centres_x / scale_x, indexing="ij"), dim=-1)
    return 2.0 * coords.flatten(0, 1) - 1.0


def augment_coords(coords: torch.Tensor, *, shift: float | None = None, jitter: float | None = None,
                   rescale: float | None = None) -> torch.Tensor:
    """Training-time augmentation of (n_patches, 2) coordinates, drawn in their dtype and device.

    The draws, in this order, from torch's generator: ``shift`` two values uniform in ``[-s, s]``
    (added, one per axis); ``jitter`` two values ``exp(uniform(-log j, log j))`` (multiplied, one per
    axis); ``rescale`` one value ``exp(uniform(-log r, log r))`` (multiplying both axes). None skips
    a step and draws nothing.

    Example:
        >>> coords = torch.zeros(3, 2) + 0.5
        >>> bool(((augment_coords(coords, rescale=2.0) / coords) - 1).abs().max() < 1)
        True
    """
    def draw(count: int, low: float, high: float) -> torch.Tensor:
        return torch.empty(count, dtype=coords.dtype, device=coords.device).uniform_(low, high)

    if shift is not None:
        coords = coords + draw(2, -shift, shift)[None, :]
    if jitter is not None:
        coords = coords * draw(2, -math.log(jitter), math.log(jitter)).exp()[None, :]
    if rescale is not None:
        coords = coords * draw(1, -math.log(rescale), math.log(rescale)).exp()
    return coords


def rope_sin_cos(coords: torch.Tensor, periods: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sin, cos), each (n_patches, head_dim), for (n_patches, 2) coordinates."""
    angles = 2 * math.pi * coords[:, :, None] / periods[None, None, :]
    angles = angles.flatten(1, 2).tile(2)
    return torch.sin(angles), torch.cos(angles)


def rotate_patches(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """Rotate the trailing ``sin.shape[0]`` tokens of (B, heads, N, head_dim) ``x``, in the RoPE dtype.

    The leading (prefix) tokens pass unchanged; the result has the dtype of ``x``.
    """
    dtype = x.dtype
    x = x.to(sin.dtype)
    n_prefix = x.shape[-2] - sin.shape[-2]
    prefix, patches = x[:, :, :n_prefix], x[:, :, n_prefix:]
    first, second = patches.chunk(2, dim=-1)
    rotated = patches * cos + torch.cat((-second, first), dim=-1) * sin
    return torch.cat((prefix, rotated), dim=-2).to(dtype)


class RopeEmbedding(nn.Module):
    """Holds the periods (persistent buffer ``periods``) and makes (sin, cos) for a patch layout.

    In train mode the coordinates get the ``shift`` / ``jitter`` / ``rescale`` augmentation
    (:func:`augment_coords`), a new draw per call; in eval mode never.

    Example:
        >>> rope = RopeEmbedding(head_dim=16, base=100.0)
        >>> [t.shape for t in rope.for_grid(2, 3)]
        [torch.Size([6, 16]), torch.Size([6, 16])]
    """

    periods: torch.Tensor

    def __init__(self, head_dim: int, *, base: float | None = 100.0, min_period: float | None = None,
                 max_period: float | None = None, normalize: Normalize = "separate",
                 dtype: Literal["fp32", "fp16", "bf16"] = "fp32", shift: float | None = None,
                 jitter: float | None = None, rescale: float | None = None) -> None:
        super().__init__()
        if head_dim % 4:
            raise ValueError(f"RoPE needs a head width divisible by 4, got {head_dim}")
        self.normalize: Normalize = normalize
        self.shift, self.jitter, self.rescale = shift, jitter, rescale
        periods = rope_periods(head_dim, base=base, min_period=min_period, max_period=max_period)
        self.register_buffer("periods", periods.to(_DTYPES[dtype]), persistent=True)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> RopeEmbedding:
        # Device moves apply; dtype casts do not: the periods stay the values the weights gave.
        before = self.periods
        super()._apply(fn, recurse)  # type: ignore[no-untyped-call]
        after = self.periods
        if after.dtype != before.dtype:
            kept = after.to(before.dtype) if before.is_meta or after.is_meta else before.to(after.device)
            self.periods = kept
        return self

    @property
    def augments(self) -> bool:
        """Whether a call draws random coordinate augmentations (train mode with any of them set)."""
        return self.training and any(v is not None for v in (self.shift, self.jitter, self.rescale))

    def forward(self, centres_y: torch.Tensor, centres_x: torch.Tensor, extent: tuple[float, float],
                dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(sin, cos) for patches at the given centres (patch units) of an image ``extent`` patches large.

        ``dtype``: compute the coordinates, angles and tables in this dtype (the periods cast to it);
        None: in the dtype of the periods buffer.
        """
        periods = self.periods if dtype is None else self.periods.to(dtype)
        coords = normalized_coords(centres_y.to(periods.dtype), centres_x.to(periods.dtype), extent,
                                   self.normalize)
        if self.augments:
            coords = augment_coords(coords, shift=self.shift, jitter=self.jitter, rescale=self.rescale)
        return rope_sin_cos(coords, periods)

    def for_grid(self, h: int, w: int, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(sin, cos) of the ordinary ``h x w`` patch grid (``dtype`` as in :meth:`forward`)."""
        compute = self.periods.dtype if dtype is None else dtype
        centres_y, centres_x = grid_centres(h, w, device=self.periods.device, dtype=compute)
        tables: tuple[torch.Tensor, torch.Tensor] = self(centres_y, centres_x, (h, w), compute)
        return tables
