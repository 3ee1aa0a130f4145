"""Features of video frames: a CLS row with its timestamp per kept frame, streamed batch by batch."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from dinofeat.data.preprocess import Size, pil_geometry, to_normalized_tensor
from dinofeat.data.video import VideoFrame, frame_batches
from dinofeat.features.extractor import FeatureExtractor
from dinofeat.features.loop import run_batches


@dataclass(frozen=True)
class FrameFeatures:
    """CLS features of a clip's kept frames.

    Attributes:
        features: (N, D) float32.
        times: (N,) float64 presentation times in seconds.
        indices: (N,) int64 frame numbers in the clip.
    """

    features: torch.Tensor
    times: torch.Tensor
    indices: torch.Tensor


def embed_video(model: FeatureExtractor, clip: str | os.PathLike[str], *, every: int = 1,
                size: Size | None = None, batch_size: int = 32) -> FrameFeatures:
    """CLS features of every ``every``-th frame, with its time, through the model's preprocessing.

    Args:
        model: Any model (ViT or CNN).
        clip: Input video.
        every: Keep every N-th frame.
        size: As for images (:meth:`~dinofeat.features.extractor.FeatureExtractor.embed`): None for the
            model's evaluation transform, an int crop, or (H, W).
        batch_size: Frames per forward pass.
    """
    geometry = pil_geometry(model.preprocess, size)

    def preprocessed(frames: list[VideoFrame]) -> tuple[torch.Tensor, list[VideoFrame]]:
        pixels = [to_normalized_tensor(geometry(frame.image), model.preprocess) for frame in frames]
        return torch.stack(pixels), frames

    def cls(batch: torch.Tensor) -> torch.Tensor:
        return model.backbone.forward_tokens(batch).cls  # as embed() reads it

    batches = map(preprocessed, frame_batches(clip, batch_size, every=every))
    features: list[torch.Tensor] = []
    frames: list[VideoFrame] = []
    for tokens, kept in run_batches(batches, cls, model.device, model.dtype):
        features.append(tokens.float().cpu())
        frames.extend(kept)
    return FrameFeatures(torch.cat(features), torch.tensor([f.time for f in frames], dtype=torch.float64),
                         torch.tensor([f.index for f in frames], dtype=torch.int64))
