"""Linear probe on frozen DINO features (the official ``eval_linear.py`` protocol, cached-feature variant).

Features: the CLS token of each of the last ``n`` blocks, each through the final LayerNorm,
concatenated; optionally followed by the mean of the last block's patch tokens (dim D * (n + avgpool)).
Classifier: one ``nn.Linear`` initialised N(0, 0.01) with zero bias, trained with SGD (momentum 0.9,
weight decay 0 by default), learning rate ``base_lr * batch_size / 256``, cosine-annealed to 0 per
epoch; top-1/top-5 on the validation set after every epoch (best and last reported).

Difference from the official protocol: features are extracted ONCE with the evaluation transform
and cached, so the probe trains without the official per-epoch ``RandomResizedCrop(224)`` +
horizontal-flip augmentation (100 epochs over fresh crops). That makes it orders of magnitude
cheaper; expect accuracies somewhat below the paper's linear numbers (less regularisation).
With ``avgpool`` the official code interleaves CLS and pooled values element-wise (it only works
for n = 1); we concatenate them, which is the same probe up to a fixed permutation of the weights.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from dinofeat.features.extractor import FeatureExtractor
from dinofeat.features.image_files import BatchFeatures


@dataclass(frozen=True)
class LinearProbeConfig:
    """Training settings of the linear probe (defaults: the official ones, lr for batch 1024)."""

    epochs: int = 100
    batch_size: int = 1024
    base_lr: float = 0.001  # scaled by batch_size / 256
    momentum: float = 0.9
    weight_decay: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs <= 0 or self.batch_size <= 0 or self.base_lr <= 0:
            raise ValueError(f"epochs, batch_size and base_lr must be positive: {self}")
        if self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise ValueError(f"weight_decay must be >= 0 and momentum in [0, 1): {self}")

    @property
    def lr(self) -> float:
        return self.base_lr * self.batch_size / 256


def linear_probe_features(extractor: FeatureExtractor, n_last_blocks: int = 4, avgpool: bool = False
                          ) -> BatchFeatures:
    """A batch -> features function: concatenated final-normed CLS of the last ``n_last_blocks`` blocks,
    plus the average-pooled last-block patch tokens if ``avgpool``.

    Example:
        >>> import dinofeat
        >>> model = dinofeat.load({"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2,
        ...                        "img_size": 32}, pretrained=False, device="cpu")
        >>> linear_probe_features(model, 2, avgpool=True)(torch.randn(3, 3, 32, 32)).shape
        torch.Size([3, 96])
    """
    prefix = int(getattr(extractor.backbone, "num_prefix_tokens", 1))

    def compute(batch: torch.Tensor) -> torch.Tensor:
        layers = extractor.intermediate_layers(batch, n_last_blocks, batch_size=batch.shape[0],
                                               progress=False)
        parts = [layer[:, 0] for layer in layers]
        if avgpool:
            parts.append(layers[-1][:, prefix:].mean(dim=1))
        return torch.cat(parts, dim=-1)

    return compute


def _accuracy(logits: torch.Tensor, labels: torch.Tensor, top: int) -> float:
    top = min(top, logits.shape[1])
    hits = (logits.topk(top, dim=1).indices == labels.view(-1, 1)).any(dim=1)
    return 100.0 * float(hits.float().mean())


def _check(train: torch.Tensor, train_labels: torch.Tensor, val: torch.Tensor, val_labels: torch.Tensor,
           config: LinearProbeConfig) -> None:
    if train.ndim != 2 or val.ndim != 2 or train.shape[1] != val.shape[1]:
        raise ValueError(f"need (n, dim) train and val features of the same dim, got {tuple(train.shape)} "
                         f"and {tuple(val.shape)}")
    if train_labels.shape != (train.shape[0],) or val_labels.shape != (val.shape[0],):
        raise ValueError("labels must have one entry per feature row")


def train_linear_probe(train_features: torch.Tensor, train_labels: torch.Tensor, val_features: torch.Tensor,
                       val_labels: torch.Tensor, config: LinearProbeConfig | None = None,
                       num_classes: int | None = None) -> dict[str, Any]:
    """Train a linear classifier on cached features; accuracies of the best and the last epoch.

    Args:
        train_features: (n_train, dim) frozen features.
        train_labels: (n_train,) class indices.
        val_features: (n_val, dim).
        val_labels: (n_val,).
        config: Training settings; the official defaults if None.
        num_classes: Defaults to the largest label + 1.

    Returns:
        ``{"best": {"epoch", "top1", "top5"}, "last": {...}, "history": [...], "config": {...}, "lr": ...}``
        with accuracies in percent ("top5" is top-min(5, classes)).

    Example:
        >>> x = torch.randn(64, 8); y = (x[:, 0] > 0).long()
        >>> train_linear_probe(x, y, x, y, LinearProbeConfig(epochs=20, batch_size=16))["last"]["top1"] > 90
        True
    """
    config = config or LinearProbeConfig()
    _check(train_features, train_labels, val_features, val_labels, config)
    classes = num_classes or int(max(int(train_labels.max()), int(val_labels.max()))) + 1
    generator = torch.Generator().manual_seed(config.seed)
    head = nn.Linear(train_features.shape[1], classes)
    with torch.no_grad():
        head.weight.normal_(0.0, 0.01, generator=generator)
        head.bias.zero_()
    optimizer = torch.optim.SGD(head.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.epochs, eta_min=0)
    x, y = train_features.float().cpu(), train_labels.long().cpu()
    history = []
    for epoch in range(config.epochs):
        order = torch.randperm(x.shape[0], generator=generator)
        for start in range(0, x.shape[0], config.batch_size):
            rows = order[start:start + config.batch_size]
            loss = nn.functional.cross_entropy(head(x[rows]), y[rows])
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
        scheduler.step()
        with torch.no_grad():
            logits = head(val_features.float().cpu())
        labels = val_labels.long().cpu()
        history.append({"epoch": epoch + 1, "loss": float(loss.detach()),
                        "top1": _accuracy(logits, labels, 1), "top5": _accuracy(logits, labels, 5)})
    best = max(history, key=lambda h: (h["top1"], -h["epoch"]))
    if not math.isfinite(history[-1]["loss"]):
        raise RuntimeError(f"linear probe diverged (loss {history[-1]['loss']}); lower base_lr")
    return {"best": {k: best[k] for k in ("epoch", "top1", "top5")},
            "last": {k: history[-1][k] for k in ("epoch", "top1", "top5")},
            "history": history, "config": asdict(config), "lr": config.lr}
