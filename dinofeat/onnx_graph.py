"""Export-ready forward passes: one module per backbone family whose outputs are named tensors.

The ONNX graph must compute, for any input height and width, what the PyTorch model computes. Two
things stand in the way for ViTs: the official position-embedding rule branches in Python on the
image size, and ``F.interpolate`` takes its scale as a Python float. Here the resampling is written
as two interpolation matrices (rows = output positions, built from ``arange`` of the traced grid
size) applied to the stored table, which is the same separable bicubic filter
(``a = -0.75``, clamped borders; antialiased: ``a = -0.5``, truncated and renormalised windows)
that PyTorch applies; the "keep the table" case becomes a scale of exactly 1, where the bicubic
weights are exactly (0, 1, 0, 0).

A family plugs in with :func:`register_family` (backbone class -> builder of its export module).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from dinofeat.models import DinoResNet, DinoVisionTransformer

OUTPUTS = ("cls", "patches", "attention")
ExportBuilder = Callable[[nn.Module, Sequence[str]], nn.Module]
_FAMILIES: dict[type[nn.Module], ExportBuilder] = {}


class UnsupportedOutputError(ValueError):
    """An output was asked of a family that does not have it (attention of a CNN)."""


def register_family(backbone_type: type[nn.Module], builder: ExportBuilder) -> None:
    """Teach the exporter a backbone family: ``builder(backbone, outputs)`` returns a module whose
    ``forward(images)`` returns the requested outputs, in order, as a tuple."""
    _FAMILIES[backbone_type] = builder


def export_module(backbone: nn.Module, outputs: Sequence[str]) -> nn.Module:
    """The export module of ``backbone``'s family for ``outputs`` (a subset of :data:`OUTPUTS`)."""
    unknown = [name for name in outputs if name not in OUTPUTS]
    if unknown or not outputs:
        raise ValueError(f"unknown ONNX outputs {unknown or list(outputs)}; choose from {', '.join(OUTPUTS)}")
    builder = next((b for t, b in _FAMILIES.items() if isinstance(backbone, t)), None)
    if builder is None and hasattr(backbone, "forward_tokens"):
        builder = TokenExport  # any other family answering the token interface (checked like the rest)
    if builder is None:
        raise TypeError(f"no ONNX export for {type(backbone).__name__}; known families: "
                        f"{', '.join(t.__name__ for t in _FAMILIES)}")
    # eval(): the exporter restores the wrapper's mode afterwards, and with it its children's.
    return builder(backbone, outputs).eval()


# ------------------------------------------------------------------ resampling as matrices
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
    """:func:`dinofeat.models.pos_embed.interpolate_pos_embed` without Python branches on the size."""
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
                               num_prefix=0 if vit.no_embed_class else vit.num_prefix_tokens,
                               offset=config.interpolate_offset, antialias=config.interpolate_antialias)

    vit.__dict__["_pos_embed_for"] = resample
    try:
        yield
    finally:
        del vit.__dict__["_pos_embed_for"]


class TokenExport(nn.Module):
    """Named outputs of a backbone answering ``forward_tokens``: ``cls`` (B, D), ``patches`` (B, h, w, D)
    and ``attention`` (B, heads, h, w), the last block's CLS attention over the patch keys."""

    def __init__(self, backbone: nn.Module, outputs: Sequence[str]) -> None:
        super().__init__()
        if "attention" in outputs and not getattr(backbone, "has_attention", True):
            raise UnsupportedOutputError(f"{type(backbone).__name__} has no attention (export cls and/or "
                                         "patches)")
        self.backbone = backbone
        self.outputs = tuple(outputs)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        backbone: Any = self.backbone  # a family module: forward_tokens is not on nn.Module
        result = backbone.forward_tokens(images, cls_attention="attention" in self.outputs)
        batch, (h, w) = images.shape[0], result.grid
        named = {"cls": result.cls, "patches": result.patches.reshape(batch, h, w, -1)}
        if result.cls_attention is not None:
            keys = result.cls_attention[:, :, result.num_prefix:]
            named["attention"] = keys.reshape(batch, keys.shape[1], h, w)
        return tuple(named[name] for name in self.outputs)


class ViTExport(TokenExport):
    """A DINO / DINOv2 ViT, with the position-embedding resampling computed in the graph."""

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        assert isinstance(self.backbone, DinoVisionTransformer)
        with _graph_pos_embed(self.backbone):
            return super().forward(images)


class ResNetExport(nn.Module):
    """DINO's ResNet-50: ``cls`` (B, 2048) average-pooled, ``patches`` (B, h, w, 2048) the last map."""

    def __init__(self, resnet: DinoResNet, outputs: Sequence[str]) -> None:
        super().__init__()
        if "attention" in outputs:
            raise UnsupportedOutputError("attention is the last block's CLS attention of a Vision "
                                         "Transformer; a ResNet has none (export cls and/or patches)")
        self.resnet = resnet
        self.outputs = tuple(outputs)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feature_map = self.resnet.feature_map(images)
        named = {"cls": self.resnet.forward_head(feature_map), "patches": feature_map.permute(0, 2, 3, 1)}
        return tuple(named[name] for name in self.outputs)


def _vit(backbone: nn.Module, outputs: Sequence[str]) -> nn.Module:
    assert isinstance(backbone, DinoVisionTransformer)
    return ViTExport(backbone, outputs)


def _resnet(backbone: nn.Module, outputs: Sequence[str]) -> nn.Module:
    assert isinstance(backbone, DinoResNet)
    return ResNetExport(backbone, outputs)


register_family(DinoVisionTransformer, _vit)
register_family(DinoResNet, _resnet)
