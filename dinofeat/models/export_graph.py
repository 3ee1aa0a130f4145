"""Export-ready forward passes: a module per backbone whose ``forward(images)`` returns named tensors.

The ONNX graph must compute, for any input height and width, what the PyTorch model computes. Any
backbone answering the token interface exports through :class:`TokenExport`; a family whose forward
branches in Python on the image size (the ViT's position-embedding rule) or has no tokens (ResNet)
gives its own module in its :class:`~dinofeat.models.family.ModelFamily` record (``export_module``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

OUTPUTS = ("cls", "patches", "attention")
#: (backbone, output names) -> a module whose ``forward(images)`` returns those outputs, in order.
ExportBuilder = Callable[[nn.Module, Sequence[str]], nn.Module]


class UnsupportedOutputError(ValueError):
    """An output was asked of a family that does not have it (attention of a CNN)."""


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


def check_outputs(outputs: Sequence[str]) -> None:
    unknown = [name for name in outputs if name not in OUTPUTS]
    if unknown or not outputs:
        raise ValueError(f"unknown ONNX outputs {unknown or list(outputs)}; choose from {', '.join(OUTPUTS)}")
