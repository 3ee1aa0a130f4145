"""Key mapping of DINO's ResNet-50 weights: official (torchvision) keys -> timm keys."""

from __future__ import annotations

from collections.abc import Mapping

import torch

StateDict = dict[str, torch.Tensor]


def resnet_official_to_timm(state: Mapping[str, torch.Tensor]) -> StateDict:
    """Official DINO ResNet-50 (torchvision keys) -> timm ResNet keys.

    The names are identical; any ``fc.*`` classifier is dropped.

    Example:
        >>> sorted(resnet_official_to_timm({"conv1.weight": torch.zeros(1), "fc.bias": torch.zeros(1)}))
        ['conv1.weight']
    """
    return {key: value for key, value in state.items() if not key.startswith("fc.")}
