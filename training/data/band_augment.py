"""Multi-crop augmentation for multi-band arrays (C, H, W): the DINO crops without the RGB-only
steps (colour jitter, greyscale and solarisation assume three colour channels).

Per crop: random resized crop (bicubic), horizontal flip, optional vertical flip and 90-degree
rotation, per-band intensity gain, Gaussian blur, standardisation, Gaussian noise. Every random
draw comes from torch's global generator, which the dataset seeds per (seed, epoch, sample), so a
resumed run sees the same crops as an uninterrupted one (as with :mod:`dinofeat.training.data.augment`).
"""

from __future__ import annotations

import math

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from dinofeat.config.preprocess import BandNormalization
from dinofeat.training.config.train_config import BandsConfig


def _chance(p: float) -> bool:
    return p > 0 and torch.rand(()).item() < p


class BandCropAugmentation:
    """One crop of a stretched (C, H, W) band tensor, augmented and standardised.

    Args:
        size: Output side in pixels.
        scale: Area range of the random resized crop.
        bands: Augmentation settings.
        norm: The per-band normalisation (only its standardisation is applied here).
    """

    def __init__(self, size: int, scale: tuple[float, float], bands: BandsConfig, norm: BandNormalization
                 ) -> None:
        self.crop = v2.RandomResizedCrop(size, scale=scale, interpolation=v2.InterpolationMode.BICUBIC,
                                         antialias=True)
        self.bands, self.norm = bands, norm

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        b = self.bands
        x = self.crop(image)
        if _chance(0.5):
            x = x.flip(-1)
        if b.vflip and _chance(0.5):
            x = x.flip(-2)
        if b.rot90:
            x = torch.rot90(x, int(torch.randint(4, ()).item()), dims=(-2, -1))
        if _chance(b.intensity_p):
            gain = torch.exp((torch.rand(x.shape[0], 1, 1) * 2 - 1) * b.intensity_range)
            x = x * gain
        if _chance(b.blur_p):
            low, high = b.blur_sigma
            sigma = low + (high - low) * torch.rand(()).item()
            kernel = 2 * math.ceil(3 * sigma) + 1
            x = TF.gaussian_blur(x, kernel_size=[kernel, kernel], sigma=[sigma, sigma])
        x = self.norm.standardized(x)
        if _chance(b.noise_p):
            x = x + torch.randn_like(x) * b.noise_std
        return x.contiguous()


class BandMultiCrop:
    """2 global and N local crops of one band array, as in the RGB ``MultiCropAugmentation``.

    Example:
        >>> norm = BandNormalization(channels=5)
        >>> aug = BandMultiCrop(32, 16, (0.4, 1.0), (0.1, 0.4), 2, BandsConfig(), norm)
        >>> [tuple(c.shape) for c in aug(torch.rand(5, 40, 40))]
        [(5, 32, 32), (5, 32, 32), (5, 16, 16), (5, 16, 16)]
    """

    def __init__(self, global_size: int, local_size: int, global_scale: tuple[float, float],
                 local_scale: tuple[float, float], local_crops_number: int, bands: BandsConfig,
                 norm: BandNormalization) -> None:
        self.norm = norm
        self.global_crop = BandCropAugmentation(global_size, global_scale, bands, norm)
        self.local_crop = BandCropAugmentation(local_size, local_scale, bands, norm)
        self.local_crops_number = local_crops_number

    def __call__(self, image: torch.Tensor) -> list[torch.Tensor]:
        if image.ndim != 3 or image.shape[0] != self.norm.channels:
            raise ValueError(f"expected ({self.norm.channels}, H, W) bands, got {tuple(image.shape)}")
        stretched = self.norm.stretched(image.float())
        crops = [self.global_crop(stretched), self.global_crop(stretched)]
        crops += [self.local_crop(stretched) for _ in range(self.local_crops_number)]
        return crops
