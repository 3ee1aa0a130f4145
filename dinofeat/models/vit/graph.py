"""The ONNX graph of a DINO / DINOv2 ViT: the position-embedding resampling without Python branches.

The official position-embedding rule branches in Python on the image size, and ``F.interpolate``
takes its scale as a Python float. Here the resampling is written as two interpolation matrices
(rows = output positions, built from ``arange`` of the traced grid size) applied to the stored table,
which is the same separable bicubic filter (``a = -0.75``, clamped borders; antialiased: ``a = -0.5``,
truncated and renormalised windows) that PyTorch applies; the "keep the table" case becomes a scale
of exactly 1, where the bicubic weights are exactly (0, 1, 0, 0).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from dinofeat.models.export_graph import TokenExport
from dinofeat.models.vit.model import DinoVisionTransformer


def _cubic(x: torch.Tensor, a: float) -> torch.Tensor:
    """Keys' cubic convolution kernel at |x|."""
    x = x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def bicubic_matrix(size_in: int, size_out: Any, inverse_scale: torch.Tensor) -> torch.Tensor:
    """(size_out, size_in) weights of PyTorch's bicubic resampling (``align_corners=False``).

    ``inverse_scale`` is input pixels per output pixel (a 0-d tensor, so that it stays in the graph).
    """
    out = torch.arange(size_out, dtype=torch.float32)
    source = (out + 0.5) * inverse_scale - 0.5
    base = torch.floor(source)
    fraction = source - base
    positions = torch.arange(size_in, dtype=torch.float32)
    weights = torch.zeros(out.shape[0], size_in)
    for tap, distance in zip(range(-1, 3), (fraction + 1, fraction, 1 - fraction, 2 - fraction), strict=True):
        index = torch.clamp(base + tap, 0, size_in - 1)
        weights = weights + (index[:, None] == positions[None, :]).float() * _cubic(distance, -0.75)[:, None]
    return weights


def antialiased_bicubic_matrix(size_in: int, size_out: Any) -> torch.Tensor:
    """(size_out, size_in) weights of PyTorch's antialiased bicubic resampling to a size (a = -0.5,
    support widened by the downscale factor, windows truncated at the borders and renormalised)."""
    out = torch.arange(size_out, dtype=torch.float32)
    scale = size_in / _scalar(size_out)
    support = 2.0 * torch.clamp(scale, min=1.0)
    center = scale * (out + 0.5)
    low = torch.clamp(torch.floor(center - support + 0.5), min=0.0)
    high = torch.clamp(torch.floor(center + support + 0.5), max=float(size_in))
    positions = torch.arange(size_in, dtype=torch.float32)[None, :]
    inside = (positions >= low[:, None]) & (positions < high[:, None])
    weights = _cubic((positions - center[:, None] + 0.5) / torch.clamp(scale, min=1.0), -0.5) * inside.float()
    return weights / weights.sum(dim=1, keepdim=True)


def _scalar(value: Any) -> torch.Tensor:
    """A (possibly traced) size as a 0-d float tensor: the graph keeps it symbolic."""
    return torch.full((), value, dtype=torch.float32)


def graph_pos_embed(pos_embed: torch.Tensor, *, image_hw: tuple[Any, Any], grid_hw: tuple[Any, Any],
                    num_prefix: int, offset: float, antialias: bool) -> torch.Tensor:
    """:func:`dinofeat.models.vit.pos_embed.interpolate_pos_embed` without Python branches on the size."""
    (height, width), (h, w) = image_hw, grid_hw
    dim = int(pos_embed.shape[-1])
    side = math.isqrt(int(pos_embed.shape[1]) - num_prefix)  # a parameter: constant in the graph
    prefix, patch = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    grid = patch.reshape(side, side, dim).float()
    if antialias:
        if offset:
            raise NotImplementedError("antialiased resampling with a scale offset has no ONNX export")
        rows, cols = antialiased_bicubic_matrix(side, h), antialiased_bicubic_matrix(side, w)
    else:
        # The official rule keeps the stored table for a square image of the stored grid: scale 1.
        keep = (_scalar(h) * _scalar(w) == side * side) & (_scalar(height) == _scalar(width))
        one = torch.ones(())
        inverse_h = torch.where(keep, one, side / (_scalar(h) + offset)) if offset else side / _scalar(h)
        inverse_w = torch.where(keep, one, side / (_scalar(w) + offset)) if offset else side / _scalar(w)
        rows, cols = bicubic_matrix(side, h, inverse_h), bicubic_matrix(side, w, inverse_w)
    resampled = torch.einsum("hi,ijd,wj->hwd", rows, grid, cols).reshape(1, -1, dim)
    return torch.cat([prefix, resampled.to(pos_embed.dtype)], dim=1)


@contextmanager
def _graph_pos_embed(vit: DinoVisionTransformer) -> Iterator[None]:
    """Route ``vit``'s position-embedding resampling through :func:`graph_pos_embed` for one call."""
    config = vit.config

    def resample(image_hw: tuple[Any, Any], grid_hw: tuple[Any, Any]) -> torch.Tensor:
        assert vit.pos_embed is not None
        return graph_pos_embed(vit.pos_embed, image_hw=image_hw, grid_hw=grid_hw,
                               num_prefix=vit.pos_embed_prefix,
                               offset=config.interpolate_offset, antialias=config.interpolate_antialias)

    vit.__dict__["_pos_embed_for"] = resample
    try:
        yield
    finally:
        del vit.__dict__["_pos_embed_for"]


class ViTExport(TokenExport):
    """A DINO / DINOv2 ViT, with the position-embedding resampling computed in the graph."""

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        assert isinstance(self.backbone, DinoVisionTransformer)
        with _graph_pos_embed(self.backbone):
            return super().forward(images)


def vit_export_module(backbone: nn.Module, outputs: Sequence[str]) -> nn.Module:
    assert isinstance(backbone, DinoVisionTransformer)
    return ViTExport(backbone, outputs)
