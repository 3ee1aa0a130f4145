"""Image files on disk: listing folders, reading file lists, opening images safely, and labelled
(ImageFolder-style) folders.

File lists (``--files-from``, ``data.file_list``) name one image per line; blank lines are skipped,
absolute paths are kept and relative paths are resolved against the folder that holds the list, so a
list can travel with its images.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from dinofeat.utils.errors import ImageReadError

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})


def list_image_files(folder: str | os.PathLike[str], *, suffixes: frozenset[str] = IMAGE_SUFFIXES,
                     what: str = "image") -> list[Path]:
    """Image files (or other files, by ``suffixes``) below ``folder`` (recursively), sorted.

    Raises:
        FileNotFoundError: ``folder`` is not a folder, or holds no such file.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{what} folder {root} does not exist")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise FileNotFoundError(f"no {what} files ({', '.join(sorted(suffixes))}) under {root}")
    return files


def open_image(path: str | os.PathLike[str]) -> Image.Image:
    """Open and fully decode an image as RGB (greyscale replicated, alpha dropped).

    An image of more than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels (Pillow's decompression-bomb
    limit, about 89 million) is refused before its pixels are decoded; a genuine huge image can be
    let through by raising that limit.

    Raises:
        ImageReadError: the file is missing, unreadable, not a decodable image or over the pixel
            limit; the message names it.
    """
    try:
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x its limit: refuse those too, before decoding.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                return image.convert("RGB")
    except FileNotFoundError:
        raise ImageReadError(f"image file not found: {path}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageReadError(
            f"refusing image {path} as a possible decompression bomb: {error} (set "
            "PIL.Image.MAX_IMAGE_PIXELS higher to read it anyway)") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise ImageReadError(f"cannot read image {path}: {error}") from None


def command_line_images(paths: list[str]) -> list[Path]:
    """The image files that command-line arguments name: files as given, folders listed."""
    if not paths:
        raise ValueError("give image files or folders")
    files: list[Path] = []
    for item in paths:
        path = Path(item)
        if path.is_dir():
            files.extend(list_image_files(path))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"no such image file or folder: {item}")
    return files


def read_file_list(path: str | os.PathLike[str]) -> list[Path]:
    """The image paths a file list names, in order (see the module docstring for relative paths).

    Raises:
        FileNotFoundError: the list does not exist or names no image.
    """
    listing = Path(path)
    if not listing.is_file():
        raise FileNotFoundError(f"file list {listing} does not exist")
    names = [line.strip() for line in listing.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise FileNotFoundError(f"file list {listing} names no image")
    return [Path(name) if Path(name).is_absolute() else listing.parent / name for name in names]


@dataclass(frozen=True)
class LabeledFiles:
    """Image files with their class index and the sorted class names."""

    files: list[Path]
    labels: list[int]
    class_names: list[str]


def scan_image_folder(root: str | os.PathLike[str]) -> LabeledFiles:
    """Files and labels of an ImageFolder-style directory (class sub-folders, searched recursively).

    Raises:
        FileNotFoundError: ``root`` is missing, has no class sub-folders, or a class folder has no images.

    Example:
        >>> scan_image_folder("imagenette2/val").class_names[:2]  # doctest: +SKIP
        ['n01440764', 'n02102040']
    """
    path = Path(root)
    if not path.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {path}")
    classes = sorted(entry.name for entry in os.scandir(path) if entry.is_dir())
    if not classes:
        raise FileNotFoundError(f"{path} has no class sub-folders (expected ROOT/<class>/<image>)")
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        found = sorted(p for p in (path / name).rglob("*") if _is_image(p))
        if not found:
            raise FileNotFoundError(f"class folder {path / name} contains no image files")
        files.extend(found)
        labels.extend([label] * len(found))
    return LabeledFiles(files, labels, classes)


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
