"""The ONNX graph of DINO's ResNet-50: the pooled vector and the last feature map."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dinofeat.models.export_graph import UnsupportedOutputError
from dinofeat.models.resnet.model import DinoResNet


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


def resnet_export_module(backbone: nn.Module, outputs: Sequence[str]) -> nn.Module:
    assert isinstance(backbone, DinoResNet)
    return ResNetExport(backbone, outputs)
