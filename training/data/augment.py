"""DINO multi-crop augmentation: 2 global crops and N local crops of one image.

All randomness is drawn from torch's global generator, so seeding it (see
:func:`dinofeat.training.data.images.sample_seed`) makes the crops of a sample a function of
(seed, epoch, sample index), whatever the process layout.

The pixels are torchvision's (the official pipeline's); two things make them cheaper on a data
worker: the hue shift goes through exact lookup tables (:mod:`dinofeat.training.data.hue`), and with
``as_uint8=True`` the worker hands over uint8 pixels and :func:`normalize_crops` does ToTensor +
Normalize once per batch in the training process, with the same float operations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision import transforms
from torchvision.transforms import functional as TF

from dinofeat.config.preprocess import IMAGENET_MEAN, IMAGENET_STD
from dinofeat.training.data.hue import adjust_hue


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


class ColorJitter(transforms.ColorJitter):  # type: ignore[misc]  # torchvision: untyped base class
    """torchvision's ColorJitter on PIL images (the same draws, order and pixels), hue by lookup table."""

    def forward(self, img: Image.Image) -> Image.Image:
        order, brightness, contrast, saturation, hue = self.get_params(
            self.brightness, self.contrast, self.saturation, self.hue)
        for fn_id in order.tolist():
            if fn_id == 0 and brightness is not None:
                img = TF.adjust_brightness(img, brightness)
            elif fn_id == 1 and contrast is not None:
                img = TF.adjust_contrast(img, contrast)
            elif fn_id == 2 and saturation is not None:
                img = TF.adjust_saturation(img, saturation)
            elif fn_id == 3 and hue is not None:
                img = adjust_hue(img, hue)
        return img


def pil_to_uint8(img: Image.Image) -> torch.Tensor:
    """An RGB PIL image as a (3, H, W) uint8 tensor (a view: stacking the batch makes it contiguous)."""
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)


def normalize_crops(crops: Sequence[torch.Tensor], device: torch.device | str = "cpu",
                    mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                    ) -> list[torch.Tensor]:
    """The step's float inputs on ``device``: uint8 crops get ToTensor + Normalize, float crops are moved.

    On the CPU the result equals ``Normalize(ToTensor(img))`` of every crop bit for bit: the same
    operations (to float, / 255, - mean, / std) on each element, batched.

    Example:
        >>> img = Image.new("RGB", (3, 2), (10, 128, 250))
        >>> single = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)(transforms.ToTensor()(img))
        >>> torch.equal(normalize_crops([pil_to_uint8(img)[None]])[0][0], single)
        True
    """
    out = []
    for crop in crops:
        crop = crop.to(device, non_blocking=True)
        if crop.dtype == torch.uint8:
            mean_t = torch.as_tensor(mean, dtype=torch.float32, device=crop.device).view(-1, 1, 1)
            std_t = torch.as_tensor(std, dtype=torch.float32, device=crop.device).view(-1, 1, 1)
            # uint8 / 255 is computed in float32 (one pass instead of a cast and a division).
            crop = crop.contiguous().div(255).sub_(mean_t).div_(std_t)
        out.append(crop)
    return out


class MultiCropAugmentation:
    """The DINO augmentation: returns ``[global_1, global_2, local_1, ..., local_N]`` tensors.

    Args:
        global_size: Side of the global crops (224).
        local_size: Side of the local crops (96).
        global_scale: Area range of the global RandomResizedCrop.
        local_scale: Area range of the local crops.
        local_crops_number: N (0 disables local crops).
        as_uint8: Return uint8 (3, H, W) crops, for :func:`normalize_crops` on the batch.

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
        as_uint8: bool = False,
    ) -> None:
        flip_and_color = transforms.Compose([
            transforms.RandomHorizontalFlip(p=0.5),
            transforms.RandomApply([ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
            transforms.RandomGrayscale(p=0.2),
        ])
        normalize: Callable[[Image.Image], torch.Tensor] = pil_to_uint8 if as_uint8 else transforms.Compose([
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
