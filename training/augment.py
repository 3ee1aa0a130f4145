"""DINO multi-crop augmentation: 2 global crops and N local crops of one image.

All randomness is drawn from torch's global generator, so seeding it (see
:func:`dinofeat.training.data.sample_seed`) makes the crops of a sample a function of
(seed, epoch, sample index), whatever the process layout.
"""

from __future__ import annotations

import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision import transforms

from dinofeat.config import IMAGENET_MEAN, IMAGENET_STD


class RandomGaussianBlur:
    """PIL Gaussian blur with probability ``p`` and radius ~ U(radius_min, radius_max)."""

    def __init__(self, p: float = 0.5, radius_min: float = 0.1, radius_max: float = 2.0) -> None:
        self.p, self.radius_min, self.radius_max = p, radius_min, radius_max

    def __call__(self, img: Image.Image) -> Image.Image:
        if torch.rand(()).item() >= self.p:
            return img
        radius = self.radius_min + (self.radius_max - self.radius_min) * torch.rand(()).item()
        return img.filter(ImageFilter.GaussianBlur(radius=radius))


class RandomSolarize:
    """PIL solarisation (threshold 128) with probability ``p``."""

    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        return ImageOps.solarize(img) if torch.rand(()).item() < self.p else img


class MultiCropAugmentation:
    """The DINO augmentation: returns ``[global_1, global_2, local_1, ..., local_N]`` tensors.

    Args:
        global_size: Side of the global crops (224).
        local_size: Side of the local crops (96).
        global_scale: Area range of the global RandomResizedCrop.
        local_scale: Area range of the local crops.
        local_crops_number: N (0 disables local crops).

    Example:
        >>> aug = MultiCropAugmentation(32, 16, local_crops_number=2)
        >>> [tuple(c.shape) for c in aug(Image.new("RGB", (40, 40)))]
        [(3, 32, 32), (3, 32, 32), (3, 16, 16), (3, 16, 16)]
    """

    def __init__(
        self,
        global_size: int = 224,
        local_size: int = 96,
        global_scale: tuple[float, float] = (0.4, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.4),
        local_crops_number: int = 8,
    ) -> None:
        flip_and_color = transforms.Compose([
            transforms.RandomHorizontalFlip(p=0.5),
            transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
            transforms.RandomGrayscale(p=0.2),
        ])
        normalize = transforms.Compose([
            transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        bicubic = transforms.InterpolationMode.BICUBIC

        def crop(size: int, scale: tuple[float, float]) -> transforms.RandomResizedCrop:
            return transforms.RandomResizedCrop(size, scale=scale, interpolation=bicubic)

        self.global_1 = transforms.Compose([
            crop(global_size, global_scale), flip_and_color, RandomGaussianBlur(1.0), normalize])
        self.global_2 = transforms.Compose([
            crop(global_size, global_scale), flip_and_color, RandomGaussianBlur(0.1), RandomSolarize(0.2),
            normalize])
        self.local = transforms.Compose([
            crop(local_size, local_scale), flip_and_color, RandomGaussianBlur(0.5), normalize])
        self.local_crops_number = local_crops_number

    def __call__(self, image: Image.Image) -> list[torch.Tensor]:
        crops = [self.global_1(image), self.global_2(image)]
        crops += [self.local(image) for _ in range(self.local_crops_number)]
        return crops
