"""The token interface every backbone family answers.

The extractor, the evaluations and the dense tools never ask which family a backbone is:
they call ``forward_tokens`` and read a :class:`TokenOutput`. A family module (timm ViT for
DINO / DINOv2, ResNet, ...) only has to produce this one structure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch


@dataclass
class TokenOutput:
    """Everything one forward pass of a backbone produces.

    Attributes:
        tokens: (B, P + h*w, D) final output through the final norm(s): P prefix tokens (the
            global token first: CLS, or a CNN's pooled vector; then register / storage tokens),
            then the patch tokens row by row.
        grid: Patch grid (h, w) of ``tokens``.
        num_prefix: P.
        cls_attention: (B, heads, P + h*w) softmax row of the CLS query in the last block over
            every key, or None.
        intermediates: Outputs of the requested blocks (or CNN stages), each in the layout of
            ``tokens`` and through the final norm(s) as the official ``get_intermediate_layers``
            gives them, in block order. CNN stages keep their own width and stride (a DINOv3
            ConvNeXt: the stage's pooled vector first, only the last stage normed).
        intermediate_grids: The patch grid of each entry of ``intermediates`` (CNN stages differ).
    """

    tokens: torch.Tensor
    grid: tuple[int, int]
    num_prefix: int
    cls_attention: torch.Tensor | None = None
    intermediates: list[torch.Tensor] = field(default_factory=list)
    intermediate_grids: list[tuple[int, int]] = field(default_factory=list)

    @property
    def cls(self) -> torch.Tensor:
        """(B, D) global feature: the normed CLS token (a CNN: its pooled vector)."""
        return self.tokens[:, 0]

    @property
    def registers(self) -> torch.Tensor:
        """(B, P - 1, D) register / storage tokens (empty when the model has none)."""
        return self.tokens[:, 1:self.num_prefix]

    @property
    def patches(self) -> torch.Tensor:
        """(B, h*w, D) patch tokens, row-major over the grid."""
        return self.tokens[:, self.num_prefix:]

    def patch_grid(self) -> torch.Tensor:
        """(B, h, w, D) patch tokens as a map."""
        h, w = self.grid
        return self.patches.reshape(self.tokens.shape[0], h, w, -1)


@runtime_checkable
class TokenBackbone(Protocol):
    """What the extractor needs of a backbone module.

    Attributes:
        config: The architecture config it was built from.
        has_attention: Whether ``forward_tokens(..., cls_attention=True)`` is supported.
        depth: Number of blocks (or stages) that ``blocks=`` indexes.
        patch_size: Pixels per patch side (None for a CNN, whose stride varies by stage).

    ``forward_tokens(..., patch_stride=s)`` asks for overlapping patches (a denser grid); a family
    that has no such grid raises NotImplementedError for any ``s`` that is not None.
    """

    config: Any
    has_attention: bool

    @property
    def depth(self) -> int: ...

    @property
    def patch_size(self) -> int | None: ...

    def forward_tokens(self, x: torch.Tensor, *, cls_attention: bool = False,
                       blocks: Sequence[int] = (), patch_stride: int | None = None) -> TokenOutput: ...

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


def check_images(x: torch.Tensor, in_chans: int = 3, patch_size: int | None = None) -> None:
    """Refuse anything but a (N, C, H, W) batch with the backbone's channel count and, given a
    ``patch_size``, at least one patch on each side."""
    if x.ndim != 4 or x.shape[1] != in_chans:
        raise ValueError(f"expected images of shape (N, {in_chans}, H, W), got {tuple(x.shape)}")
    height, width = x.shape[2], x.shape[3]
    if patch_size is not None and (height < patch_size or width < patch_size):
        raise ValueError(f"image of {height}x{width} px is smaller than one {patch_size}x{patch_size} patch")


def selected_blocks(blocks: Sequence[int], depth: int) -> list[int]:
    """Sorted, de-duplicated non-negative block indices; negative ones count from the end.

    Example:
        >>> selected_blocks([-1, 0, 11], 12)
        [0, 11]
    """
    if any(not -depth <= b < depth for b in blocks):
        raise IndexError(f"block indices {list(blocks)} out of range for depth {depth}")
    return sorted({b % depth for b in blocks})


def check_patch_stride(stride: int, patch: int, height: int, width: int) -> None:
    """Refuse a patch stride outside [1, P] or one that does not tile (H - P, W - P) exactly."""
    if not 1 <= stride <= patch:
        raise ValueError(f"patch stride must be between 1 and the patch size {patch}, got {stride}")
    if (height - patch) % stride or (width - patch) % stride:
        raise ValueError(
            f"patch stride {stride} does not divide the image's (H - P, W - P) = "
            f"({height - patch}, {width - patch}) for patch size {patch}: resize the image to "
            f"(k * {stride} + {patch}) px per side")
