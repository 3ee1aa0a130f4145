"""Linear semantic-segmentation probe on frozen patch tokens (DINOv2's "linear" protocol, simplified).

A 1x1 linear layer (optionally after BatchNorm) maps the final-normed patch tokens of the last block,
or of the last four blocks concatenated ("+ms"-free DINOv2 ``linear`` / ``linear4`` heads), to class
logits; the logits are upsampled bilinearly to the label size and trained with cross-entropy
(``ignore_index`` pixels left out); the score is the mean IoU on a validation split.

Differences from DINOv2's mmsegmentation recipe, said here once: images and masks are resized to one
fixed square size (no random crops, flips or sliding-window inference), and the token features are
computed once and cached (the backbone is frozen, so this changes nothing but the augmentation).

Folder layout of a split (``--train DIR`` / ``--val DIR``): ``DIR/images/<name>.jpg|png`` with
``DIR/annotations/<name>.png`` (one ADE20K split: ``images/training`` + ``annotations/training``), or
VOC's ``DIR/JPEGImages`` + ``DIR/SegmentationClass``. Masks are indexed (palette) or greyscale PNGs
whose pixel values are class indices; 255 is ignored.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from dinofeat.data.files import IMAGE_SUFFIXES
from dinofeat.features.extractor import FeatureExtractor
from dinofeat.features.image_files import BatchFeatures
from dinofeat.search.neighbors import as_float_tensor

LAYOUTS = (("images", "annotations"), ("JPEGImages", "SegmentationClass"))
IGNORE_INDEX = 255


@dataclass(frozen=True)
class SegProbeConfig:
    """Settings of the probe.

    Attributes:
        n_last_blocks: Blocks whose tokens are concatenated: 1 (DINOv2's ``linear``) or 4 (``linear4``).
        batchnorm: BatchNorm over the token features before the linear layer.
        image_size: Side of the square the images (and masks) are resized to; a multiple of the patch.
        epochs: Passes over the training features.
        batch_size: Images per step.
        lr: AdamW learning rate (decayed linearly to 0).
        weight_decay: AdamW weight decay.
        seed: Seed of the head's initialisation and of the batch order.
        ignore_index: Label value left out of the loss and the score.
        reduce_zero_label: ADE20K convention: label 0 ("other") becomes ignored and labels shift down by one.
    """

    n_last_blocks: int = 1
    batchnorm: bool = True
    image_size: int = 448
    epochs: int = 20
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    ignore_index: int = IGNORE_INDEX
    reduce_zero_label: bool = False

    def __post_init__(self) -> None:
        for name in ("n_last_blocks", "image_size", "epochs", "batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(f"need lr > 0 and weight_decay >= 0, got {self.lr}, {self.weight_decay}")


# ------------------------------------------------------------------ data
@dataclass(frozen=True)
class SegmentationSplit:
    """Image files and their mask files, paired by file stem, sorted."""

    images: list[Path]
    masks: list[Path]


def scan_segmentation_folder(root: str | os.PathLike[str]) -> SegmentationSplit:
    """Pairs of ``images/`` + ``annotations/`` (or ``JPEGImages/`` + ``SegmentationClass/``) under ``root``.

    Raises:
        FileNotFoundError: neither layout, no images, or an image without its mask (named).
    """
    base = Path(root)
    for image_dir, mask_dir in LAYOUTS:
        if (base / image_dir).is_dir() and (base / mask_dir).is_dir():
            break
    else:
        raise FileNotFoundError(
            f"{base} has neither images/ + annotations/ nor JPEGImages/ + SegmentationClass/"
        )
    masks = {p.stem: p for p in (base / mask_dir).glob("*.png")}
    images = sorted(p for p in (base / image_dir).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if mask_dir == "SegmentationClass":  # VOC: JPEGImages also holds the images without masks
        images = [p for p in images if p.stem in masks]
    if not images:
        raise FileNotFoundError(f"no images in {base / image_dir}")
    missing = [p for p in images if p.stem not in masks]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} image(s) have no mask in {base / mask_dir}, first {missing[0].name} "
            f"(expected {base / mask_dir / (missing[0].stem + '.png')})"
        )
    return SegmentationSplit(images, [masks[p.stem] for p in images])


def load_masks(
    split: SegmentationSplit,
    size: int,
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
    reduce_zero_label: bool = False,
) -> torch.Tensor:
    """(N, size, size) uint8 label maps (nearest resize), checked against their images and the classes.

    Raises:
        ValueError: a mask whose size differs from its image's, or a label >= ``num_classes`` that is not
            ``ignore_index``; the message names the file.
    """
    out = torch.empty(len(split.masks), size, size, dtype=torch.uint8)
    for number, (image_path, mask_path) in enumerate(zip(split.images, split.masks, strict=True)):
        with Image.open(image_path) as image:
            image_size = image.size
        with Image.open(mask_path) as mask:
            if mask.size != image_size:
                raise ValueError(
                    f"{mask_path} is {mask.size[0]}x{mask.size[1]} but its image {image_path.name} "
                    f"is {image_size[0]}x{image_size[1]}"
                )
            if mask.mode not in ("P", "L"):
                raise ValueError(
                    f"{mask_path} is a {mask.mode} image; masks are indexed or greyscale PNGs of "
                    "class indices"
                )
            labels = np.array(mask.resize((size, size), Image.Resampling.NEAREST), dtype=np.int64)
        if reduce_zero_label:
            labels = np.where(labels == 0, ignore_index, labels - 1)
            labels[labels == ignore_index - 1] = ignore_index
        bad = labels[(labels >= num_classes) & (labels != ignore_index)]
        if bad.size:
            raise ValueError(
                f"{mask_path} has label {int(bad.max())}, beyond the {num_classes} classes "
                f"(0..{num_classes - 1}; {ignore_index} is ignored)"
            )
        out[number] = torch.from_numpy(labels.astype(np.uint8))
    return out


def patch_feature_fn(extractor: FeatureExtractor, n_last_blocks: int) -> BatchFeatures:
    """Batch -> (B, h*w*C) flattened final-normed patch tokens, of the last ``n_last_blocks`` blocks
    concatenated along the channels (C = n * D); rows can stream to disk like any feature."""

    def compute(batch: torch.Tensor) -> torch.Tensor:
        layers = extractor.intermediate_layers(
            batch, n=n_last_blocks, batch_size=batch.shape[0], progress=False
        )
        if isinstance(layers, list):
            raise TypeError("the segmentation probe needs a ViT (its layers share one patch grid)")
        grid = extractor.backbone.config.patch_size  # type: ignore[union-attr]
        h, w = batch.shape[2] // grid, batch.shape[3] // grid
        patches = layers[:, :, -h * w :]  # drop CLS and registers
        return torch.cat(list(patches), dim=2).flatten(1)

    return compute


# ------------------------------------------------------------------ head and metric
class LinearSegHead(nn.Module):
    """Optional BatchNorm, then a 1x1 linear layer: (B, C_in, h, w) -> (B, classes, h, w)."""

    def __init__(self, channels: int, num_classes: int, batchnorm: bool = True) -> None:
        super().__init__()
        self.norm: nn.Module = nn.BatchNorm2d(channels) if batchnorm else nn.Identity()
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)
        nn.init.normal_(self.classifier.weight, std=0.01)
        assert self.classifier.bias is not None
        nn.init.zeros_(self.classifier.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.norm(tokens))  # type: ignore[no-any-return]


def confusion_matrix(
    predicted: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """(classes, classes) counts, rows = true class, ignoring ``ignore_index`` pixels."""
    keep = target != ignore_index
    pairs = target[keep].long() * num_classes + predicted[keep].long()
    return torch.bincount(pairs, minlength=num_classes**2).reshape(num_classes, num_classes)


def mean_iou(confusion: torch.Tensor) -> tuple[float, list[float]]:
    """(mIoU over classes that occur in the truth or the prediction, per-class IoU with NaN for absent).

    Example:
        >>> mean_iou(torch.tensor([[3, 1], [0, 4]]))[0]
        0.775
    """
    confusion = confusion.double()
    intersection = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - intersection
    ious = torch.where(
        union > 0, intersection / union.clamp(min=1), torch.tensor(float("nan"), dtype=torch.float64)
    )
    present = ious[~ious.isnan()]
    return (float(present.mean()) if present.numel() else float("nan")), ious.tolist()


def _grid(features: Any, index: np.ndarray | slice, shape: tuple[int, int, int]) -> torch.Tensor:
    rows = as_float_tensor(features[index])
    return rows.reshape(-1, *shape).permute(0, 3, 1, 2)


def evaluate_head(
    head: LinearSegHead,
    features: Any,
    masks: torch.Tensor,
    shape: tuple[int, int, int],
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
    batch_size: int = 16,
) -> dict[str, Any]:
    """mIoU of ``head`` on (N, h*w*C) token features against (N, S, S) masks."""
    head.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    with torch.no_grad():
        for start in range(0, masks.shape[0], batch_size):
            logits = head(_grid(features, slice(start, start + batch_size), shape))
            target = masks[start : start + batch_size]
            logits = F.interpolate(logits, size=target.shape[1:], mode="bilinear", align_corners=False)
            confusion += confusion_matrix(logits.argmax(1), target, num_classes, ignore_index)
    miou, ious = mean_iou(confusion)
    return {"mIoU": miou, "per_class_IoU": ious}


def train_seg_probe(
    train_features: Any,
    train_masks: torch.Tensor,
    val_features: Any,
    val_masks: torch.Tensor,
    grid: tuple[int, int],
    num_classes: int,
    config: SegProbeConfig,
) -> dict[str, Any]:
    """Train the linear head on cached token features and score it on the validation split.

    Args:
        train_features: (N, h*w*C) flattened token features (a tensor or a memory-mapped array).
        train_masks: (N, S, S) labels.
        val_features: As ``train_features`` for the validation images.
        val_masks: (M, S, S) labels.
        grid: The token grid (h, w).
        num_classes: Classes (labels 0 .. num_classes - 1).
        config: Probe settings.

    Returns:
        ``final`` (mIoU, per-class IoU on val), ``history`` (train loss and val mIoU per epoch), ``config``.
    """
    h, w = grid
    channels = int(np.asarray(train_features[:1]).shape[1]) // (h * w)
    shape = (h, w, channels)
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    head = LinearSegHead(channels, num_classes, config.batchnorm)
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(train_masks.shape[0] / config.batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 1 - step / (config.epochs * steps_per_epoch)
    )
    history = []
    for epoch in range(config.epochs):
        head.train()
        order = torch.randperm(train_masks.shape[0], generator=generator)
        total = 0.0
        for start in range(0, len(order), config.batch_size):
            index = np.sort(order[start : start + config.batch_size].numpy())
            logits = head(_grid(train_features, index, shape))
            target = train_masks[torch.from_numpy(index)].long()
            if not (target != config.ignore_index).any():
                continue  # nothing to learn from, and the mean loss would be NaN
            logits = F.interpolate(logits, size=target.shape[1:], mode="bilinear", align_corners=False)
            loss = F.cross_entropy(logits, target, ignore_index=config.ignore_index)
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(index)
        scores = evaluate_head(head, val_features, val_masks, shape, num_classes, config.ignore_index)
        history.append({"epoch": epoch + 1, "train_loss": total / len(order), "val_mIoU": scores["mIoU"]})
    return {"final": scores, "history": history, "config": asdict(config)}
