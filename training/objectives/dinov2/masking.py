"""iBOT masks of DINOv2: block-wise masks of a patch grid, and the batch rules of the official collate.

:class:`BlockMasking` draws one mask the official way (``dinov2/data/masking.py``): rectangles of 4 to
``max_patches`` patches with a log-uniform aspect ratio in [0.3, 1/0.3], added until the target count is
reached or no rectangle fits in 10 tries (never more than the target, possibly fewer).
:func:`draw_batch_masks` applies the collate's rules (``dinov2/data/collate.py``): over the 2B global-crop
images pooled, ``int(2B x p)`` get a mask, with graded ratios from ``linspace(r_min, r_max, n + 1)``
(image i between bins i and i + 1), the others none, in a shuffled order. Randomness comes from a
``random.Random`` the caller seeds, so a run's masks are a function of its position.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch


class BlockMasking:
    """Block-wise masks of an ``(height, width)`` patch grid.

    Args:
        grid: (height, width) in patches.
        max_patches: Largest rectangle (the official ``0.5 * S // p * S // p``: half the grid).
        min_patches: Smallest rectangle (4).
        min_aspect: Smallest aspect ratio (0.3); the largest is its inverse.

    Example:
        >>> mask = BlockMasking((4, 4), max_patches=8)(6, random.Random(0))
        >>> mask.shape, int(mask.sum()) <= 6
        ((4, 4), True)
    """

    def __init__(self, grid: tuple[int, int], max_patches: float, min_patches: int = 4,
                 min_aspect: float = 0.3) -> None:
        self.height, self.width = grid
        self.max_patches = max_patches
        self.min_patches = min_patches
        self.log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))

    def _add_block(self, mask: np.ndarray, limit: float, rng: random.Random) -> int:
        """Up to 10 tries to add one rectangle of at most ``limit`` new patches; the patches added."""
        for _ in range(10):
            area = rng.uniform(self.min_patches, limit)
            aspect = math.exp(rng.uniform(*self.log_aspect))
            h = round(math.sqrt(area * aspect))
            w = round(math.sqrt(area / aspect))
            if w < self.width and h < self.height:
                top = rng.randint(0, self.height - h)
                left = rng.randint(0, self.width - w)
                window = mask[top:top + h, left:left + w]
                new = h * w - int(window.sum())
                if 0 < new <= limit:
                    window[...] = True
                    return new
        return 0

    def __call__(self, n_patches: int, rng: random.Random) -> np.ndarray:
        """A (height, width) bool mask of at most ``n_patches`` patches."""
        mask = np.zeros((self.height, self.width), dtype=bool)
        count = 0
        while count < n_patches:
            added = self._add_block(mask, min(n_patches - count, self.max_patches), rng)
            if added == 0:
                break
            count += added
        return mask


@dataclass
class IbotMasks:
    """The masks of one batch's 2B global-crop images, crop-major (row c*B + b: crop c of image b).

    Attributes:
        masks: (2B, N) bool.
        upperbound: The official static size of the masked-token buffers (sum of int(N x bin_max) over the
            masked images); dinofeat needs no padding and keeps it for the record.
    """

    masks: torch.Tensor
    upperbound: int

    def indices(self) -> torch.Tensor:
        """(M,) positions of the masked patches in the flattened (2B * N) patch tokens."""
        return self.masks.flatten().nonzero().flatten()

    def weights(self) -> torch.Tensor:
        """(M,) 1 / (masked patches of the image) for each masked patch (the official ``masks_weight``)."""
        per_image = 1 / self.masks.sum(-1).clamp(min=1.0)
        return per_image.unsqueeze(-1).expand_as(self.masks)[self.masks]


def max_block_patches(crop_size: int, patch_size: int) -> float:
    """The official ``max_num_patches = 0.5 * S // p * S // p`` (left to right, as written)."""
    return 0.5 * crop_size // patch_size * crop_size // patch_size


def draw_batch_masks(n_images: int, generator: BlockMasking, probability: float,
                     ratio: tuple[float, float], rng: random.Random) -> IbotMasks:
    """The official collate's masks for ``n_images`` (= 2B) global crops.

    Example:
        >>> gen = BlockMasking((4, 4), max_patches=8)
        >>> batch = draw_batch_masks(8, gen, 0.5, (0.1, 0.5), random.Random(0))
        >>> batch.masks.shape, int((batch.masks.sum(-1) > 0).sum()) <= 4
        (torch.Size([8, 16]), True)
    """
    n_patches = generator.height * generator.width
    n_masked = int(n_images * probability)
    bins = torch.linspace(ratio[0], ratio[1], n_masked + 1)  # float32, as the official code
    masks, upperbound = [], 0
    for i in range(n_masked):
        low, high = bins[i], bins[i + 1]
        target = int(n_patches * (low + (high - low) * rng.random()))  # random.uniform on the tensors
        masks.append(torch.from_numpy(generator(target, rng)))
        upperbound += int(n_patches * high)
    masks += [torch.zeros(generator.height, generator.width, dtype=torch.bool)] * (n_images - n_masked)
    rng.shuffle(masks)
    return IbotMasks(torch.stack(masks).flatten(1), upperbound)
