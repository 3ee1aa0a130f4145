"""DINO's ResNet-50: a timm ResNet trunk whose keys match the official torchvision ones."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.models.resnet import Bottleneck, ResNet

from dinofeat.models.resnet.config import ResNetConfig
from dinofeat.models.tokens import TokenOutput, check_images


class DinoResNet(ResNet):
    """ResNet-50 without classifier. ``forward(x)`` gives the 2048-d average-pooled feature.

    In the token interface the pooled vector is the one prefix token and the last stage's
    stride-32 map gives the patch tokens; a ResNet has no attention and no selectable blocks.

    Example:
        >>> DinoResNet(ResNetConfig())(torch.randn(1, 3, 64, 64)).shape
        torch.Size([1, 2048])
    """

    has_attention = False

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

    @property
    def depth(self) -> int:
        return 0

    @property
    def patch_size(self) -> None:
        return None

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """Last stage's feature map (B, 2048, H/32, W/32)."""
        check_images(x)
        return self.forward_features(x)

    def forward_tokens(self, x: torch.Tensor, *, cls_attention: bool = False,
                       blocks: Sequence[int] = (), patch_stride: int | None = None) -> TokenOutput:
        """Pooled vector, then the last stage's map row by row, as a :class:`TokenOutput`."""
        if patch_stride is not None:
            raise NotImplementedError("a ResNet has no patches to overlap (patch_stride is for ViTs)")
        if cls_attention:
            raise TypeError("a ResNet has no attention (use embed or patch_tokens)")
        if blocks:
            raise ValueError("a ResNet has no transformer blocks to return")
        fmap = self.feature_map(x)
        pooled = self.forward_head(fmap)
        patches = fmap.flatten(2).transpose(1, 2)
        tokens = torch.cat([pooled.unsqueeze(1), patches], dim=1)
        return TokenOutput(tokens, (fmap.shape[2], fmap.shape[3]), num_prefix=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.feature_map(x))
