"""Run a backbone once per crop resolution and the head once on everything."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dinofeat.models import Backbone


def resolution_groups(crops: Sequence[torch.Tensor]) -> list[tuple[int, int]]:
    """[start, end) index ranges of consecutive crops with the same width (last dimension).

    This is the official grouping: only the width is compared, and only neighbours are merged.

    Example:
        >>> a, b = torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 4, 4)
        >>> resolution_groups([a, a, b, b, b, a])
        [(0, 2), (2, 5), (5, 6)]
    """
    groups: list[tuple[int, int]] = []
    start = 0
    for index in range(1, len(crops) + 1):
        if index == len(crops) or crops[index].shape[-1] != crops[start].shape[-1]:
            groups.append((start, index))
            start = index
    return groups


class MultiCropWrapper(nn.Module):
    """Backbone + head applied to a list of crops; outputs are concatenated in crop order.

    Args:
        backbone: Maps (B, 3, H, W) to (B, D) features.
        head: Maps (N, D) to (N, K).

    Example:
        >>> wrapper = MultiCropWrapper(nn.Sequential(nn.Flatten(), nn.LazyLinear(4)), nn.Identity())
        >>> wrapper([torch.zeros(2, 3, 4, 4)] * 2).shape
        torch.Size([4, 4])
    """

    def __init__(self, backbone: Backbone, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, crops: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        if isinstance(crops, torch.Tensor):
            crops = [crops]
        groups = resolution_groups(crops)
        features = [self.backbone(torch.cat(list(crops[start:end]))) for start, end in groups]
        out: torch.Tensor = self.head(torch.cat(features))
        return out
