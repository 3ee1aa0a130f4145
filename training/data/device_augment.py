"""The DINO multi-crop augmentation split in two, so that a GPU is not starved by PIL workers.

* On the CPU data workers, :class:`MultiCropParams` decodes nothing more than the image and
  draws every random decision of the official augmentation, in the official order, from the
  same seeded per-sample stream as the PIL path (:class:`~dinofeat.training.data.augment.
  MultiCropAugmentation`): for a given (seed, epoch, index) both paths make the same crops,
  flips, jitter factors and orders, greyscale, blur and solarisation choices.
* On the training device, :class:`DeviceMultiCrop` applies them to the uint8 images, batched
  per crop: resized crops, then flips, colour jitter, greyscale, blur, solarisation and
  normalisation as tensor operations over the whole batch.

The pixels differ slightly from the PIL path (docs/training.md, "GPU data path"): tensor
bicubic resampling with antialiasing instead of PIL's, a sampled Gaussian kernel instead of
PIL's box-filter approximation, and torchvision's tensor colour formulas (which follow PIL's).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms
from torchvision.transforms import functional as TF
from torchvision.transforms.v2 import functional as F2

from dinofeat.config.preprocess import IMAGENET_MEAN, IMAGENET_STD

#: Columns of one crop's parameter row.
TOP, LEFT, HEIGHT, WIDTH, FLIP, JITTER, BRIGHTNESS, CONTRAST, SATURATION, HUE = range(10)
ORDER = slice(10, 14)  # the colour-jitter order: a permutation of (brightness, contrast, saturation, hue)
GRAY, BLUR, SIGMA, SOLARIZE = range(14, 18)
N_PARAMS = 18

_JITTER = transforms.ColorJitter(0.4, 0.4, 0.2, 0.1)
_RATIO = (3.0 / 4.0, 4.0 / 3.0)
_BLUR_RADIUS = (0.1, 2.0)
_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's (ITU-R 601-2), as PIL's convert("L")


@dataclass(frozen=True)
class CropKind:
    """One of the augmentation's three pipelines (first global, second global, local)."""

    size: int
    scale: tuple[float, float]
    blur_p: float
    solarize_p: float


def crop_kinds(global_size: int, local_size: int, global_scale: tuple[float, float],
               local_scale: tuple[float, float], local_crops_number: int) -> list[CropKind]:
    """The official crop list: two global crops (blur 1.0; blur 0.1 + solarise 0.2), N local (blur 0.5)."""
    return [CropKind(global_size, global_scale, 1.0, 0.0), CropKind(global_size, global_scale, 0.1, 0.2),
            *[CropKind(local_size, local_scale, 0.5, 0.0)] * local_crops_number]


def _draw(p: float) -> bool:
    return bool(torch.rand(1) < p)


def _draw_crop(image: Image.Image, kind: CropKind) -> torch.Tensor:
    """One crop's parameters, drawn exactly as the PIL pipeline draws them (same calls, same order)."""
    row = torch.zeros(N_PARAMS, dtype=torch.float64)
    row[TOP:WIDTH + 1] = torch.tensor(transforms.RandomResizedCrop.get_params(image, list(kind.scale),
                                                                            list(_RATIO)))
    row[FLIP] = float(_draw(0.5))
    # RandomApply([ColorJitter], p=0.8) skips when p < rand, i.e. applies when rand <= p.
    row[JITTER] = float(not torch.rand(1) > 0.8)
    row[ORDER] = torch.arange(4, dtype=torch.float64)
    if row[JITTER]:
        order, b, c, s, h = transforms.ColorJitter.get_params(
            _JITTER.brightness, _JITTER.contrast, _JITTER.saturation, _JITTER.hue)
        row[ORDER] = order.double()
        row[BRIGHTNESS:HUE + 1] = torch.tensor([b, c, s, h], dtype=torch.float64)
    row[GRAY] = float(_draw(0.2))
    # RandomGaussianBlur draws its coin even when p = 1, then the radius.
    row[BLUR] = float(not torch.rand(()).item() >= kind.blur_p)
    if row[BLUR]:
        row[SIGMA] = _BLUR_RADIUS[0] + (_BLUR_RADIUS[1] - _BLUR_RADIUS[0]) * torch.rand(()).item()
    if kind.solarize_p:
        row[SOLARIZE] = float(torch.rand(()).item() < kind.solarize_p)
    return row


class MultiCropParams:
    """Worker side: PIL image -> ``[uint8 image (3, H, W), parameters (n_crops, N_PARAMS)]``.

    Meant to run under the dataset's per-sample seed (``ImageDataset`` seeds torch's generator),
    like :class:`~dinofeat.training.data.augment.MultiCropAugmentation`, whose draws it repeats.

    Example:
        >>> params = MultiCropParams(crop_kinds(32, 16, (0.4, 1.0), (0.05, 0.4), 2))
        >>> image, table = params(Image.new("RGB", (40, 30)))
        >>> tuple(image.shape), tuple(table.shape)
        ((3, 30, 40), (4, 18))
    """

    def __init__(self, kinds: Sequence[CropKind]) -> None:
        self.kinds = list(kinds)

    def __call__(self, image: Image.Image) -> list[torch.Tensor]:
        table = torch.stack([_draw_crop(image, kind) for kind in self.kinds])
        return [TF.pil_to_tensor(image), table]


@dataclass
class PendingCrops:
    """A collated batch for :class:`DeviceMultiCrop`: the images (sizes differ) and their parameters."""

    images: list[torch.Tensor]
    params: torch.Tensor  # (B, n_crops, N_PARAMS)

    def pin_memory(self) -> PendingCrops:
        return PendingCrops([image.pin_memory() for image in self.images], self.params.pin_memory())


def collate_pending(batch: list[tuple[list[torch.Tensor], int]]) -> tuple[PendingCrops, int]:
    """Collate ``MultiCropParams`` samples; sums the skipped-file counts like ``collate_crops``."""
    images = [sample[0][0] for sample in batch]
    params = torch.stack([sample[0][1] for sample in batch])
    return PendingCrops(images, params), sum(sample[1] for sample in batch)


# ------------------------------------------------------------------ batched pixel operations
def _blend(image: torch.Tensor, other: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """torchvision's uint8 blend, ``(r * a + (1 - r) * b)`` clamped and truncated, with a ratio per image."""
    ratio = ratio.view(-1, 1, 1, 1)
    return (ratio * image + (1.0 - ratio) * other).clamp_(0, 255).to(torch.uint8)


def _gray(image: torch.Tensor) -> torch.Tensor:
    """(n, 1, H, W) float greyscale of uint8 RGB, before rounding."""
    r, g, b = image.float().unbind(1)
    return (_GRAY_WEIGHTS[0] * r + _GRAY_WEIGHTS[1] * g + _GRAY_WEIGHTS[2] * b).unsqueeze(1)


def gray_uint8(image: torch.Tensor) -> torch.Tensor:
    """torchvision's ``rgb_to_grayscale`` (3 output channels) for uint8 batches."""
    return _gray(image).to(torch.uint8).expand_as(image)


def adjust_brightness(image: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(image.float(), torch.zeros((), device=image.device), factor)


def adjust_contrast(image: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    mean = _gray(image).to(torch.uint8).float().mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(image.float(), mean, factor)


def adjust_saturation(image: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(image.float(), _gray(image).to(torch.uint8).float(), factor)


def adjust_hue(image: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Hue rotation by ``factor`` (a fraction of the colour wheel) per image, through HSV."""
    rgb = image.float() / 255.0
    r, g, b = rgb.unbind(1)
    value, _ = rgb.max(dim=1)
    low, _ = rgb.min(dim=1)
    chroma = value - low
    saturation = chroma / torch.where(value == 0, torch.ones_like(value), value)
    safe = torch.where(chroma == 0, torch.ones_like(chroma), chroma)
    rc, gc, bc = (value - r) / safe, (value - g) / safe, (value - b) / safe
    hue = torch.where(value == r, bc - gc, torch.where(value == g, 2.0 + rc - bc, 4.0 + gc - rc))
    hue = torch.where(chroma == 0, torch.zeros_like(hue), hue)
    hue = ((hue / 6.0) % 1.0 + factor.view(-1, 1, 1)) % 1.0
    sector = hue * 6.0
    index = torch.floor(sector) % 6
    frac = sector - torch.floor(sector)
    p = (value * (1.0 - saturation)).clamp(0.0, 1.0)
    q = (value * (1.0 - saturation * frac)).clamp(0.0, 1.0)
    t = (value * (1.0 - saturation * (1.0 - frac))).clamp(0.0, 1.0)
    choices = [(value, t, p), (q, value, p), (p, value, t), (p, q, value), (t, p, value), (value, p, q)]
    out = torch.zeros_like(rgb)
    for sector_index, channels in enumerate(choices):
        where = (index == sector_index).unsqueeze(1)
        out = torch.where(where, torch.stack(channels, dim=1), out)
    # torchvision's float -> uint8 conversion: scale by 256 - 1e-3 and truncate.
    return (out * (256.0 - 1e-3)).to(torch.uint8)


_JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def color_jitter(image: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Colour jitter with each image's own factors and order (rows whose JITTER flag is 0 are kept)."""
    out = image.clone()
    apply = params[:, JITTER] > 0
    order = params[:, ORDER].long()
    for position in range(4):
        for op_index, op in enumerate(_JITTER_OPS):
            rows = torch.nonzero(apply & (order[:, position] == op_index)).flatten()
            if rows.numel():
                factor = params[rows, BRIGHTNESS + op_index].to(torch.float32)
                out[rows] = op(out[rows], factor)
    return out


def gaussian_blur(image: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with a standard deviation per image (reflect padding), uint8 in and out."""
    n, channels, height, width = image.shape
    radius = max(1, math.ceil(3.0 * float(sigma.max())))
    offsets = torch.arange(-radius, radius + 1, device=image.device, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets / sigma.view(-1, 1).float()) ** 2)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(channels, dim=0)
    x = image.float().reshape(1, n * channels, height, width)
    pad_h, pad_w = min(radius, height - 1), min(radius, width - 1)
    x = F.pad(x, (pad_w, pad_w, 0, 0), mode="reflect") if pad_w else x
    x = F.conv2d(x, kernel[:, None, None, radius - pad_w: radius + pad_w + 1], groups=n * channels)
    x = F.pad(x, (0, 0, pad_h, pad_h), mode="reflect") if pad_h else x
    x = F.conv2d(x, kernel[:, None, radius - pad_h: radius + pad_h + 1, None], groups=n * channels)
    return x.round_().clamp_(0, 255).to(torch.uint8).reshape(n, channels, height, width)


class DeviceMultiCrop:
    """Device side: :class:`PendingCrops` -> the crop list the training step takes.

    Args:
        kinds: The crop list (:func:`crop_kinds`), as given to :class:`MultiCropParams`.
        device: Where the pixels are transformed (the training device).
        mean, std: Normalisation.
    """

    def __init__(self, kinds: Sequence[CropKind], device: torch.device,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        self.kinds = list(kinds)
        self.device = device
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255.0

    def _resized_crops(self, images: list[torch.Tensor], params: torch.Tensor, size: int) -> torch.Tensor:
        crops = []
        for image, row in zip(images, params.tolist(), strict=True):
            top, left, height, width = (int(v) for v in row[TOP:WIDTH + 1])
            crops.append(F2.resized_crop(image, top, left, height, width, [size, size],
                                         interpolation=F2.InterpolationMode.BICUBIC, antialias=True))
        return torch.stack(crops)

    def crop(self, images: list[torch.Tensor], params: torch.Tensor, kind: CropKind) -> torch.Tensor:
        """One crop of every image: (B, 3, size, size) float, normalised."""
        x = self._resized_crops(images, params, kind.size)
        flip = (params[:, FLIP] > 0).view(-1, 1, 1, 1)
        x = torch.where(flip, x.flip(-1), x)
        x = color_jitter(x, params)
        gray = (params[:, GRAY] > 0).view(-1, 1, 1, 1)
        x = torch.where(gray, gray_uint8(x), x)
        rows = torch.nonzero(params[:, BLUR] > 0).flatten()
        if rows.numel():
            x[rows] = gaussian_blur(x[rows], params[rows, SIGMA].float())
        solarize = (params[:, SOLARIZE] > 0).view(-1, 1, 1, 1)
        x = torch.where(solarize & (x >= 128), 255 - x, x)
        return (x.float() - self.mean) / self.std

    def __call__(self, pending: PendingCrops) -> list[torch.Tensor]:
        images = [image.to(self.device, non_blocking=True) for image in pending.images]
        params = pending.params.to(self.device)
        if params.shape[1] != len(self.kinds):
            raise ValueError(f"batch carries parameters for {params.shape[1]} crops, "
                             f"expected {len(self.kinds)}")
        return [self.crop(images, params[:, i], kind) for i, kind in enumerate(self.kinds)]
