"""The configuration of DINO's ResNet-50."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class ResNetConfig:
    """A ResNet trunk (DINO's ResNet-50): global-average-pooled features of width 2048."""

    depth: Literal[50] = 50
    family: Literal["resnet"] = "resnet"

    @property
    def embed_dim(self) -> int:
        return 2048

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
