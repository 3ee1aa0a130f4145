"""The configuration of a DINOv3 ConvNeXt, with the official builder's keyword names."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class DinoV3ConvNeXtConfig:
    """A DINOv3 ConvNeXt (distilled from the ViT-7B), with the official builder's keyword names.

    Attributes:
        depths: Blocks per stage (four stages, e.g. ``(3, 3, 9, 3)`` for ConvNeXt-Tiny).
        dims: Channel width of each stage; the last one is the feature width.
        in_chans: Input channels.
        drop_path_rate: Stochastic depth, linearly increasing over all blocks (training only).
        layer_scale_init_value: Initial value of each block's ``gamma`` (1e-6 for the released models).
        layer_norm_eps: Epsilon of every LayerNorm (fixed at 1e-6 in the official code).
    """

    depths: tuple[int, ...]
    dims: tuple[int, ...]
    in_chans: int = 3
    drop_path_rate: float = 0.0
    layer_scale_init_value: float = 1e-6
    layer_norm_eps: float = 1e-6
    family: Literal["dinov3_convnext"] = "dinov3_convnext"

    def __post_init__(self) -> None:
        for name in ("depths", "dims"):
            values = tuple(getattr(self, name))
            if len(values) != 4 or any(not isinstance(v, int) or v <= 0 for v in values):
                raise ValueError(f"DinoV3ConvNeXtConfig.{name} must be four positive integers, "
                                 f"got {values!r}")
            object.__setattr__(self, name, values)  # JSON gives lists; keep the frozen config hashable
        if not isinstance(self.in_chans, int) or self.in_chans <= 0:
            raise ValueError(f"DinoV3ConvNeXtConfig.in_chans must be a positive integer, "
                             f"got {self.in_chans!r}")

    @property
    def embed_dim(self) -> int:
        return self.dims[-1]

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "depths": list(self.depths), "dims": list(self.dims)}
