"""torchvision's PIL hue shift, pixel for pixel, through two lookup tables (about 3x faster).

torchvision shifts the hue of a PIL image by converting it to HSV, adding a constant to the H
band (mod 256) and converting back. Both of PIL's conversions map each 24-bit colour on its own,
so tables made by those same conversions over all 2^24 colours give the same pixels: a shift is
then two gathers on packed pixels instead of two float conversions, a split and a merge. It was
the most expensive step of the DINO augmentation on a data worker (docs/benchmarks.md).

The tables take 128 MiB and about 1.3 s to build, so a process builds them only once it has
shifted as many pixels the slow way as building costs (rent until the rent paid equals the price),
or when told up front that it will shift more (:func:`expect_pixels`; a training run does, before
its data workers fork, so that they share the tables): a process that augments a few small images
never pays for them.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from torchvision.transforms import functional as TF

N_COLOURS = 1 << 24
#: Pixels shifted through PIL's conversions before the tables are built: at about 35 ns per pixel,
#: the cost of building them.
BUILD_AFTER_PIXELS = 1 << 25
_CHUNK_SIDE = 1024  # the tables are built 2^20 colours at a time, to bound the memory it takes

# Packed pixels are little-endian uint32, byte i = channel i (R, G, B or H, S, V), byte 3 unused.
_PACKED = np.dtype("<u4")
_COLOUR_BITS = np.uint32(0xFFFFFF)

_tables: tuple[np.ndarray, np.ndarray] | None = None
_pixels_shifted_by_pil = 0


def _packed(image: Image.Image) -> np.ndarray:
    return np.frombuffer(image.tobytes("raw", "RGBX"), _PACKED) & _COLOUR_BITS


def build_tables() -> tuple[np.ndarray, np.ndarray]:
    """(RGB -> HSV, HSV -> RGB) over every packed colour, made by PIL's own conversions (cached)."""
    global _tables
    if _tables is None:
        to_hsv, to_rgb = np.empty(N_COLOURS, _PACKED), np.empty(N_COLOURS, _PACKED)
        chunk = _CHUNK_SIDE * _CHUNK_SIDE
        size = (_CHUNK_SIDE, _CHUNK_SIDE)
        for start in range(0, N_COLOURS, chunk):
            colours = np.arange(start, start + chunk, dtype=_PACKED).tobytes()
            rgb = Image.frombytes("RGB", size, colours, "raw", "RGBX")
            # Relabel the bytes (no conversion) to pack HSV pixels like RGB ones, and the reverse.
            to_hsv[start:start + chunk] = _packed(Image.frombytes("RGB", size, rgb.convert("HSV").tobytes()))
            to_rgb[start:start + chunk] = _packed(Image.frombytes("HSV", size, rgb.tobytes()).convert("RGB"))
        _tables = to_hsv, to_rgb
    return _tables


def expect_pixels(pixels: int) -> None:
    """Build the tables now if this process is about to shift the hue of more pixels than they cost."""
    if pixels >= BUILD_AFTER_PIXELS:
        build_tables()


def adjust_hue(img: Image.Image, hue_factor: float) -> Image.Image:
    """``torchvision.transforms.functional.adjust_hue`` for PIL images, the same pixels.

    Example:
        >>> img = Image.new("RGB", (4, 4), (200, 40, 10))
        >>> adjust_hue(img, 0.25).tobytes() == TF.adjust_hue(img, 0.25).tobytes()
        True
    """
    global _pixels_shifted_by_pil
    if not -0.5 <= hue_factor <= 0.5:
        raise ValueError(f"hue_factor ({hue_factor}) is not in [-0.5, 0.5].")
    if img.mode != "RGB" or (_tables is None and _pixels_shifted_by_pil < BUILD_AFTER_PIXELS):
        _pixels_shifted_by_pil += img.width * img.height if img.mode == "RGB" else 0
        shifted: Image.Image = TF.adjust_hue(img, hue_factor)
        return shifted
    to_hsv, to_rgb = build_tables()
    hsv = to_hsv[_packed(img)]
    # torchvision's shift: hue_factor * 255 truncated to an integer, then taken mod 256.
    shift = np.uint32(np.int32(hue_factor * 255).astype(np.uint8))
    hsv = (hsv & np.uint32(0xFFFF00)) | ((hsv + shift) & np.uint32(0xFF))
    return Image.frombytes("RGB", img.size, to_rgb[hsv].tobytes(), "raw", "RGBX")
