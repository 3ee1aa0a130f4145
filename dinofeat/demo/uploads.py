"""Decoding what a user uploads: images only, bounded in bytes and in pixels.

Uploads stay in memory. The pixel bound is checked on the header, before anything is decoded, so
a small file that claims huge dimensions (a decompression bomb) costs nothing.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

#: Largest upload accepted, in bytes.
MAX_UPLOAD_BYTES = 32 * 1024 * 1024
#: Largest image accepted, in pixels (width x height): 50 megapixels.
MAX_UPLOAD_PIXELS = 50_000_000


class UploadError(ValueError):
    """An upload the demo refuses; the message names the file and why."""


def decode_upload(data: bytes, name: str, max_pixels: int = MAX_UPLOAD_PIXELS) -> Image.Image:
    """Bytes of an image file -> a decoded RGB image.

    Args:
        data: The uploaded file's bytes.
        name: Its name, for messages.
        max_pixels: Refuse images with more pixels than this.

    Raises:
        UploadError: empty, too large, not an image, too many pixels, or truncated.
    """
    if not data:
        raise UploadError(f"{name} is empty")
    if len(data) > MAX_UPLOAD_BYTES:
        raise UploadError(f"{name} is {len(data) / 2**20:.1f} MiB; the demo takes at most "
                          f"{MAX_UPLOAD_BYTES // 2**20} MiB")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise UploadError(f"{name} is {width}x{height} pixels ({width * height / 1e6:.0f} MP); "
                                  f"the demo takes at most {max_pixels / 1e6:.0f} MP "
                                  "(a decompression bomb, or simply too large)")
            image.load()
            return image.convert("RGB")
    except UploadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise UploadError(f"{name} is refused as a decompression bomb: {error}") from None
    except UnidentifiedImageError:
        raise UploadError(f"{name} is not an image the demo can read (JPEG, PNG, WebP, ...)") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise UploadError(f"{name} cannot be decoded: {error}") from None
