"""DINO's ResNet-50: a timm ResNet trunk whose keys match the official torchvision ones."""

from __future__ import annotations

import torch
from timm.models.resnet import Bottleneck, ResNet

from dinofeat.config import ResNetConfig


class DinoResNet(ResNet):
    """ResNet-50 without classifier. ``forward(x)`` gives the 2048-d average-pooled feature.

    Example:
        >>> DinoResNet(ResNetConfig())(torch.randn(1, 3, 64, 64)).shape
        torch.Size([1, 2048])
    """

    def __init__(self, config: ResNetConfig) -> None:
        if config.depth != 50:
            raise ValueError(f"only ResNet-50 is supported, got depth {config.depth}")
        super().__init__(
            block=Bottleneck,  # type: ignore[arg-type]  # timm annotates an instance, takes the class
            layers=(3, 4, 6, 3),
            num_classes=0,
            global_pool="avg",
        )
        self.config = config

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """Last stage's feature map (B, 2048, H/32, W/32)."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images of shape (N, 3, H, W), got {tuple(x.shape)}")
        return self.forward_features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.feature_map(x))
