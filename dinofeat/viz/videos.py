"""Attention and PCA videos of a clip, streamed.

Frames are decoded, run through the network and (for the videos) encoded ``batch_size`` at a time,
so memory does not grow with the clip. The network sees each frame as the official
``video_generation.py`` gives it: at its own size (or ``size``), cropped at the bottom / right to a
multiple of the patch size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch

from dinofeat.data.preprocess import to_normalized_tensor
from dinofeat.data.video import VideoFrame, frame_batches, video_info
from dinofeat.dense.pca import PCAProjection, attention_foreground, fit_pca
from dinofeat.features.extractor import FeatureExtractor
from dinofeat.features.masks import attention_masks, upsample_to_pixels
from dinofeat.viz.video_writer import VideoWriter, check_video_output

DEFAULT_BATCH = 8
DEFAULT_FIT_FRAMES = 8  # kept frames the PCA video's projection is fitted on
VIDEO_MASKS = ("none", "attention")
MASK_DIMMING = 0.25  # brightness of the frame outside the attention mask


def _vit_patch(model: FeatureExtractor) -> int:
    if model.patch_size is None:
        raise TypeError(f"{model.name or 'this model'} is a CNN: attention and PCA videos need a ViT")
    return model.patch_size


def _network_input(model: FeatureExtractor, frames: list[VideoFrame], patch: int
                   ) -> tuple[torch.Tensor, np.ndarray]:
    """Preprocessed (B, 3, h*P, w*P) batch and the matching uint8 (B, h*P, w*P, 3) pictures."""
    pictures = np.stack([np.asarray(frame.image) for frame in frames])
    height, width = pictures.shape[1] // patch * patch, pictures.shape[2] // patch * patch
    if not height or not width:
        raise ValueError(f"frames of {pictures.shape[2]}x{pictures.shape[1]} px are smaller than one "
                         f"{patch}x{patch} patch")
    pictures = np.ascontiguousarray(pictures[:, :height, :width])
    # One normalisation for the whole batch (the per-channel mean / std broadcast over it).
    channels_first = torch.from_numpy(pictures).permute(0, 3, 1, 2).contiguous()
    batch = to_normalized_tensor(channels_first, model.preprocess)
    return batch, pictures


def output_fps(clip: str | os.PathLike[str], every: int, fps: float | None) -> Fraction:
    """``fps`` if given, else the clip's frame rate divided by ``every`` (real-time playback)."""
    if fps is not None:
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        return Fraction(fps).limit_denominator(1001)
    rate = video_info(clip).fps
    return rate / every if rate > 0 else Fraction(25)


def heat_map(values: np.ndarray, colormap: str = "inferno") -> np.ndarray:
    """(H, W) values -> uint8 (H, W, 3), scaled to the map's own min / max (as ``plt.imsave`` does)."""
    from matplotlib import colormaps

    low, high = float(values.min()), float(values.max())
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    return (colormaps[colormap](scaled)[..., :3] * 255).round().astype(np.uint8)


def attention_video(model: FeatureExtractor, clip: str | os.PathLike[str], output: str | os.PathLike[str],
                    *, every: int = 1, size: int | tuple[int, int] | None = None, fps: float | None = None,
                    threshold: float | None = None, batch_size: int = DEFAULT_BATCH) -> int:
    """The official ``video_generation.py``: each kept frame becomes its mean-over-heads CLS attention.

    Args:
        model: A ViT.
        clip: Input video.
        output: Output video (:data:`~dinofeat.viz.video_writer.OUTPUT_SUFFIXES`), replaced only when
            complete.
        every: Keep every N-th frame.
        size: Frame resize before the network (see :func:`~dinofeat.data.video.iter_frames`).
        fps: Output frame rate (default: the clip's divided by ``every``).
        threshold: None for the inferno heat map of the mean attention; a mass share (0.6 in the
            paper) for the frame itself, dimmed outside the patches that hold that share of the
            mean attention (:func:`~dinofeat.features.masks.attention_masks`).
        batch_size: Frames per forward pass.

    Returns:
        The number of frames written.
    """
    check_video_output(output)
    patch = _vit_patch(model)
    if threshold is not None and not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    rate = output_fps(clip, every, fps)
    with VideoWriter(output, rate) as writer:
        for frames in frame_batches(clip, batch_size, every=every, size=size):
            batch, pictures = _network_input(model, frames, patch)
            mean = model.cls_attention(batch).mean(dim=1).cpu()  # (B, h, w)
            if threshold is None:
                for values in upsample_to_pixels(mean, patch).numpy():
                    writer.write(heat_map(values))
            else:
                kept = upsample_to_pixels(attention_masks(mean, threshold), patch).numpy()
                for picture, keep in zip(pictures, kept, strict=True):
                    light = np.where(keep[..., None], 1.0, MASK_DIMMING)
                    writer.write((picture * light).round().astype(np.uint8))
    return writer.frames


def pca_video(model: FeatureExtractor, clip: str | os.PathLike[str], output: str | os.PathLike[str],
              *, every: int = 1, size: int | tuple[int, int] | None = None, fps: float | None = None,
              fit_frames: int = DEFAULT_FIT_FRAMES, mask: str = "none",
              batch_size: int = DEFAULT_BATCH) -> int:
    """Each kept frame beside the first three principal components of its patch tokens, as RGB.

    One PCA (:func:`~dinofeat.dense.pca.fit_pca`) is fitted on the patch tokens of the first
    ``fit_frames`` kept frames and applied to every frame, so a colour keeps its meaning over time.
    Only those first frames are held in memory while the fit waits for them.

    Args:
        model: A ViT.
        clip: Input video.
        output: Output video, replaced only when complete; frames are (h*P, 2*w*P).
        every: Keep every N-th frame.
        size: Frame resize before the network (see :func:`~dinofeat.data.video.iter_frames`).
        fps: Output frame rate (default: the clip's divided by ``every``).
        fit_frames: Frames the PCA is fitted on (fewer if the clip is shorter).
        mask: ``"none"``, or ``"attention"``: fit on and colour only each frame's foreground, the
            patches holding 60 % of its head-mean CLS attention (black elsewhere).
        batch_size: Frames per forward pass.

    Returns:
        The number of frames written.
    """
    check_video_output(output)
    patch = _vit_patch(model)
    if fit_frames < 1:
        raise ValueError(f"fit_frames must be >= 1, got {fit_frames}")
    if mask not in VIDEO_MASKS:
        raise ValueError(f"a PCA video's mask is one of {', '.join(VIDEO_MASKS)}, got {mask!r}")
    rate = output_fps(clip, every, fps)
    outputs = ("patches", "attention") if mask == "attention" else ("patches",)
    held: list[_PCAFrames] = []  # the first frames, until the fit
    projection: PCAProjection | None = None
    with VideoWriter(output, rate) as writer:
        for frames in frame_batches(clip, batch_size, every=every, size=size):
            batch, pictures = _network_input(model, frames, patch)
            out = model.features(batch, outputs=outputs)
            keep = attention_foreground(out["attention"]) if mask == "attention" else None
            held.append(_PCAFrames(pictures, out["patches"], keep))
            if projection is None and sum(len(h.pictures) for h in held) < fit_frames:
                continue
            projection = projection or _fit_first(held, fit_frames)
            for part in held:
                _write_pca(writer, projection, part, patch)
            held = []
        if held:  # a clip shorter than fit_frames
            projection = _fit_first(held, fit_frames)
            for part in held:
                _write_pca(writer, projection, part, patch)
    return writer.frames


@dataclass(frozen=True)
class _PCAFrames:
    pictures: np.ndarray  # (B, H, W, 3) uint8
    tokens: torch.Tensor  # (B, h, w, D)
    mask: torch.Tensor | None  # (B, h, w) bool


def _fit_first(held: list[_PCAFrames], count: int) -> PCAProjection:
    tokens = torch.cat([part.tokens for part in held])[:count]
    masks = [part.mask for part in held if part.mask is not None]
    return fit_pca(tokens, mask=torch.cat(masks)[:count] if masks else None)


def _write_pca(writer: VideoWriter, projection: PCAProjection, part: _PCAFrames, patch: int) -> None:
    rgb = projection.to_rgb(part.tokens, part.mask).permute(0, 3, 1, 2).cpu()
    colours = (upsample_to_pixels(rgb, patch).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    for picture, colour in zip(part.pictures, colours, strict=True):
        writer.write(np.concatenate([picture, colour], axis=1))
