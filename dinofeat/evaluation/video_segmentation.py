"""Video object segmentation by label propagation (DINO paper, Table 5 DAVIS-2017), exact to the
official ``eval_video_segmentation.py``.

Each frame is resized so that its shorter side is 480 and its longer side a multiple of 64 below
the aspect-kept length (OpenCV's bilinear resize, reproduced bit for bit by :func:`cv2_bilinear_resize`,
so OpenCV is not needed), normalised with the script's own std (0.228, 0.224, 0.225). The labels
of a target frame are the affinity-weighted labels of the first frame and of the previous
``n_last_frames`` frames: affinity ``exp(cos / 0.1)`` between last-block patch tokens, restricted
to a ``(2 * neighborhood + 1)`` square of patches, only the ``topk`` strongest sources per target
patch kept. Propagated soft labels are upsampled by the patch size (bilinear), min-max normalised
per label, argmaxed and resized to the original frame with nearest-neighbour.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from dinofeat.data.files import open_image
from dinofeat.evaluation.davis_metrics import davis_j_and_f
from dinofeat.features.extractor import FeatureExtractor
from dinofeat.utils.atomic_write import replace_atomically

__all__ = [
    "DavisVideo",
    "davis_j_and_f",
    "davis_palette",
    "davis_videos",
    "iter_propagate",
    "propagate",
    "read_annotation",
    "read_frame",
    "save_label_png",
]

SCALE_SIZE = 480
SIZE_MULTIPLE = 64
TEMPERATURE = 0.1
FRAME_MEAN = (0.485, 0.456, 0.406)
FRAME_STD = (0.228, 0.224, 0.225)  # sic: the official script's value, not ImageNet's 0.229
_COEF_BITS = 11  # OpenCV's INTER_RESIZE_COEF_BITS


# ------------------------------------------------------------------ frames and annotations
def _resize_coefficients(
    source: int, target: int, clamp_fraction: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    position = ((np.arange(target) + 0.5) * (source / target) - 0.5).astype(np.float32)
    first = np.floor(position).astype(np.int64)
    fraction = position - first
    if clamp_fraction:  # OpenCV clamps the horizontal taps, not the vertical ones
        fraction = np.where(first < 0, 0, fraction)
        first = np.maximum(first, 0)
        over = first >= source - 1
        fraction = np.where(over, 0, fraction)
        first = np.where(over, source - 1, first)
    one = 1 << _COEF_BITS
    weight0 = np.rint((1 - fraction) * one).astype(np.int64)
    weight1 = np.rint(fraction * one).astype(np.int64)
    return np.clip(first, 0, source - 1), np.clip(first + 1, 0, source - 1), weight0, weight1


def cv2_bilinear_resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``cv2.resize(image, (width, height))`` (INTER_LINEAR) of a uint8 (H, W, C) image, bit-exact.

    OpenCV computes it in fixed point: 11-bit weights, a horizontal pass, then a vertical pass whose
    vectorised form truncates each weighted row before the final rounding; this does the same.
    """
    pixels = image.astype(np.int64)
    rows0, rows1, beta0, beta1 = _resize_coefficients(image.shape[0], height, clamp_fraction=False)
    cols0, cols1, alpha0, alpha1 = _resize_coefficients(image.shape[1], width, clamp_fraction=True)
    horizontal = pixels[:, cols0] * alpha0[None, :, None] + pixels[:, cols1] * alpha1[None, :, None]
    top = (horizontal[rows0] >> 4) * beta0[:, None, None] >> 16
    bottom = (horizontal[rows1] >> 4) * beta1[:, None, None] >> 16
    return np.asarray(((top + bottom + 2) >> 2).clip(0, 255), dtype=np.uint8)


def davis_frame_size(height: int, width: int) -> tuple[int, int]:
    """The official working size: shorter side 480, longer side floored to a multiple of 64."""
    if height > width:
        return int((SCALE_SIZE * height / width) // SIZE_MULTIPLE * SIZE_MULTIPLE), SCALE_SIZE
    return SCALE_SIZE, int((SCALE_SIZE * width / height) // SIZE_MULTIPLE * SIZE_MULTIPLE)


def _rgb_array(frame: Any) -> np.ndarray:
    if isinstance(frame, (str, os.PathLike)):
        frame = open_image(frame)
    if isinstance(frame, Image.Image):
        return np.asarray(frame.convert("RGB"))
    array = np.asarray(frame)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise TypeError(
            f"a decoded frame must be a PIL image or a uint8 (H, W, 3) RGB array, "
            f"got {array.dtype} {array.shape}"
        )
    return array


def read_frame(frame: Any) -> tuple[torch.Tensor, tuple[int, int]]:
    """(normalised (3, h, w) frame at the working size, original (H, W)) of a path, PIL image or
    uint8 RGB array, as the official ``read_frame``."""
    pixels = _rgb_array(frame)
    height, width = pixels.shape[:2]
    resized = cv2_bilinear_resize(pixels, *davis_frame_size(height, width))
    tensor = torch.from_numpy(resized).permute(2, 0, 1).float() / 255.0
    mean = torch.tensor(FRAME_MEAN).view(3, 1, 1)
    std = torch.tensor(FRAME_STD).view(3, 1, 1)
    return (tensor - mean) / std, (height, width)


def read_annotation(annotation: Any) -> np.ndarray:
    """Integer label map (H, W) of an indexed PNG path, a PIL image (palette or greyscale) or an array."""
    if isinstance(annotation, (str, os.PathLike)):
        path = Path(annotation)
        if not path.is_file():
            raise FileNotFoundError(f"annotation not found: {path}")
        with Image.open(path) as image:
            if image.mode not in ("P", "L"):
                raise ValueError(
                    f"{path} is a {image.mode} image; DAVIS annotations are indexed (palette) PNGs"
                )
            return np.array(image, dtype=np.int64)
    if isinstance(annotation, Image.Image):
        return np.array(annotation, dtype=np.int64)
    labels = np.asarray(annotation)
    if labels.ndim != 2:
        raise ValueError(f"an annotation must be a 2-D label map, got shape {labels.shape}")
    return labels.astype(np.int64)


def davis_palette() -> np.ndarray:
    """The DAVIS / PASCAL VOC colour map (256, 3) uint8 that indexed label PNGs use."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for label in range(256):
        value, red, green, blue = label, 0, 0, 0
        for bit in range(8):
            red |= ((value >> 0) & 1) << (7 - bit)
            green |= ((value >> 1) & 1) << (7 - bit)
            blue |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        palette[label] = (red, green, blue)
    return palette


def save_label_png(path: Path, labels: np.ndarray) -> None:
    """An indexed PNG of a label map with the DAVIS palette, written atomically."""
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(davis_palette().ravel().tolist())
    replace_atomically(lambda temporary: image.save(temporary, format="PNG"), path)


# ------------------------------------------------------------------ propagation
def _one_hot_small(labels: np.ndarray, size: tuple[int, int], patch: int) -> torch.Tensor:
    """The first annotation at patch resolution (nearest), one channel per label 0..max: (C, h, w)."""
    height, width = size
    small = np.array(
        Image.fromarray(labels.astype(np.uint8)).resize(
            (width // patch, height // patch), Image.Resampling.NEAREST
        )
    )
    small_labels = torch.from_numpy(small.astype(np.int64))
    return F.one_hot(small_labels, int(small_labels.max()) + 1).permute(2, 0, 1).float()


def neighbourhood_mask(height: int, width: int, size: int) -> torch.Tensor:
    """(h*w, h*w) 1 where two patches are at most ``size`` apart in both directions (Chebyshev)."""
    rows = torch.arange(height).repeat_interleave(width)
    cols = torch.arange(width).repeat(height)
    near = ((rows[:, None] - rows[None, :]).abs() <= size) & ((cols[:, None] - cols[None, :]).abs() <= size)
    return near.float()


def _patch_tokens(model: FeatureExtractor, frame: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    tokens = model.patch_tokens(frame[None], progress=False)[0]
    return tokens.flatten(0, 1).cpu(), (tokens.shape[0], tokens.shape[1])


def _propagate_step(
    target: torch.Tensor,
    sources: list[torch.Tensor],
    source_labels: list[torch.Tensor],
    mask: torch.Tensor | None,
    topk: int,
) -> torch.Tensor:
    """Soft labels (C, h*w) of the target patches from the context frames' tokens and soft labels."""
    target_n = F.normalize(target, dim=1)
    sources_n = F.normalize(torch.stack(sources), dim=2)  # (context, h*w, D)
    affinity = torch.exp(target_n[None] @ sources_n.transpose(1, 2) / TEMPERATURE)  # (context, tar, src)
    if mask is not None:
        affinity = affinity * mask
    affinity = affinity.transpose(2, 1).reshape(-1, target.shape[0])  # (context * src, tar)
    threshold = affinity.topk(topk, dim=0).values.min(dim=0).values
    affinity[affinity < threshold] = 0
    affinity = affinity / affinity.sum(dim=0, keepdim=True)
    labels = torch.cat([s.flatten(1) for s in source_labels], dim=1)  # (C, context * src)
    return labels @ affinity


def _labels_at_frame_size(
    soft: torch.Tensor, grid: tuple[int, int], patch: int, size: tuple[int, int]
) -> np.ndarray:
    upsampled = F.interpolate(
        soft.reshape(1, -1, *grid),
        scale_factor=patch,
        mode="bilinear",
        align_corners=False,
        recompute_scale_factor=False,
    )[0]
    for channel in upsampled:
        if channel.max() > 0:
            shifted = channel - channel.min()
            # The official divides unguarded; a constant channel would give NaN there.
            channel.copy_(shifted / shifted.max() if shifted.max() > 0 else shifted)
    labels = torch.max(upsampled, dim=0).indices.numpy().astype(np.uint8)
    resized = Image.fromarray(labels).resize((size[1], size[0]), Image.Resampling.NEAREST)
    return np.array(resized, dtype=np.int64)


def _name(item: Any) -> str:
    return f" {item}" if isinstance(item, (str, os.PathLike)) else ""


@torch.inference_mode()
def iter_propagate(
    model: FeatureExtractor,
    frames: Sequence[Any],
    first_annotation: Any,
    n_last_frames: int = 7,
    neighborhood: int = 12,
    topk: int = 5,
) -> Iterator[np.ndarray]:
    """Label maps (H, W) at the original frame size, frame by frame (the first is the annotation).

    Args and checks as :func:`propagate`.
    """
    patch = model.patch_size
    if patch is None:
        raise TypeError("label propagation needs a Vision Transformer's patch tokens; this model is a CNN")
    if not frames:
        raise ValueError("no frames to segment")
    if n_last_frames < 0 or neighborhood < 0 or topk < 1:
        raise ValueError(
            f"need n_last_frames >= 0, neighborhood >= 0, topk >= 1; got {n_last_frames}, "
            f"{neighborhood}, {topk}"
        )
    first, size = read_frame(frames[0])
    labels = read_annotation(first_annotation)
    if labels.shape != size:
        raise ValueError(
            f"the first annotation{_name(first_annotation)} is {labels.shape[1]}x{labels.shape[0]} "
            f"(W x H) but the first frame{_name(frames[0])} is {size[1]}x{size[0]}"
        )
    yield labels
    first_tokens, grid = _patch_tokens(model, first.to(model.device, model.dtype))
    first_labels = _one_hot_small(labels, tuple(first.shape[1:]), patch)  # type: ignore[arg-type]
    if first_labels.shape[1:] != grid:
        raise ValueError(
            f"the patch grid {grid} does not match the label grid {tuple(first_labels.shape[1:])}"
        )
    mask = neighbourhood_mask(grid[0], grid[1], neighborhood) if neighborhood > 0 else None
    queue: deque[tuple[torch.Tensor, torch.Tensor]] = deque(maxlen=n_last_frames or None)
    for frame in frames[1:]:
        tensor, frame_size = read_frame(frame)
        tokens, frame_grid = _patch_tokens(model, tensor.to(model.device, model.dtype))
        if frame_grid != grid:
            raise ValueError(f"frame {frame!s:.80} has a different size from the first frame")
        sources = [first_tokens] + [item[0] for item in queue]
        source_labels = [first_labels] + [item[1] for item in queue]
        soft = _propagate_step(tokens, sources, source_labels, mask, topk)
        if n_last_frames:
            queue.append((tokens, soft.reshape(-1, *grid)))
        yield _labels_at_frame_size(soft, grid, patch, frame_size)


def propagate(
    model: FeatureExtractor,
    frames: Sequence[Any],
    first_annotation: Any,
    n_last_frames: int = 7,
    neighborhood: int = 12,
    topk: int = 5,
) -> torch.Tensor:
    """Segment a video from its first frame's annotation by label propagation.

    Args:
        model: A ViT :class:`~dinofeat.features.extractor.FeatureExtractor`.
        frames: Frame files (paths) or decoded frames (PIL images, uint8 (H, W, 3) RGB arrays), in order.
        first_annotation: Label map of the first frame: indexed PNG path, PIL image or (H, W) array.
        n_last_frames: Previous frames used as context besides the first.
        neighborhood: Radius in patches of the source window around each target patch (0: everywhere).
        topk: Source patches kept per target patch.

    Returns:
        (T, H, W) int64 label maps at the original frame size; frame 0 is the annotation.

    Example:
        >>> labels = propagate(dinofeat.load("vit_s16"), sorted(Path("video").glob("*.jpg")),
        ...                    "video/00000.png")  # doctest: +SKIP
    """
    maps = list(iter_propagate(model, frames, first_annotation, n_last_frames, neighborhood, topk))
    return torch.from_numpy(np.stack(maps))


# ------------------------------------------------------------------ DAVIS layout
@dataclass(frozen=True)
class DavisVideo:
    """One video of ``DAVIS/JPEGImages/480p/<name>/*.jpg`` with ``DAVIS/Annotations/480p/<name>/*.png``."""

    name: str
    frames: list[Path]
    annotations: list[Path]

    @property
    def first_annotation(self) -> Path:
        return self.annotations[0]


def davis_videos(
    root: str | os.PathLike[str],
    split: str = "val",
    resolution: str = "480p",
    need_all_annotations: bool = True,
) -> list[DavisVideo]:
    """The videos of ``DAVIS/ImageSets/2017/<split>.txt``, checked before any work starts.

    Raises:
        FileNotFoundError: the split file, a video's frames, its first annotation or (with
            ``need_all_annotations``, for scoring) any frame's annotation is missing; the path is named.
    """
    base = Path(root)
    listing = base / "ImageSets" / "2017" / f"{split}.txt"
    if not listing.is_file():
        raise FileNotFoundError(f"DAVIS split file not found: {listing}")
    names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    if not names:
        raise ValueError(f"{listing} lists no videos")
    videos = []
    for name in names:
        frames = sorted((base / "JPEGImages" / resolution / name).glob("*.jpg"))
        if not frames:
            raise FileNotFoundError(
                f"no frames for video {name!r}: {base / 'JPEGImages' / resolution / name} "
                "is missing or holds no .jpg"
            )
        annotations = [base / "Annotations" / resolution / name / f"{f.stem}.png" for f in frames]
        wanted = annotations if need_all_annotations else annotations[:1]
        missing = next((path for path in wanted if not path.is_file()), None)
        if missing is not None:
            raise FileNotFoundError(
                f"missing DAVIS annotation {missing}"
                + (
                    ""
                    if missing == annotations[0]
                    else " (needed to score J&F; --no-eval segments without scoring)"
                )
            )
        for frame, annotation in zip(frames, wanted, strict=False):
            _check_same_size(frame, annotation)
        videos.append(DavisVideo(name, frames, annotations))
    return videos


def _check_same_size(frame: Path, annotation: Path) -> None:
    """Header reads only: a mask whose size differs from its frame's is refused, naming both."""
    with Image.open(frame) as image, Image.open(annotation) as mask:
        if image.size != mask.size:
            raise ValueError(
                f"{annotation} is {mask.size[0]}x{mask.size[1]} but its frame {frame.name} is "
                f"{image.size[0]}x{image.size[1]}"
            )
