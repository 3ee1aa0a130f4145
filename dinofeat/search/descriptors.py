"""Image descriptors for search and copy detection: CLS, or CLS ⊕ GeM-pooled patch tokens."""

from __future__ import annotations

import torch

from dinofeat.features.extractor import FeatureExtractor
from dinofeat.features.image_files import BatchFeatures

DESCRIPTOR_KINDS: tuple[str, ...] = ("cls", "cls+gem")
GEM_POWER = 4.0


def gem_pool(patch_tokens: torch.Tensor, power: float = GEM_POWER) -> torch.Tensor:
    """Generalised-mean pooling over tokens: (B, T, D) -> (B, D), mean(clamp(x, 1e-6)^p)^(1/p).

    Example:
        >>> gem_pool(torch.ones(2, 5, 3)).shape
        torch.Size([2, 3])
    """
    return patch_tokens.clamp(min=1e-6).pow(power).mean(dim=1).pow(1.0 / power)


def cls_gem(extractor: FeatureExtractor, batch: torch.Tensor) -> torch.Tensor:
    """CLS ⊕ GeM(p=4) of the final-normed last-block patch tokens of a preprocessed batch, not
    normalised: the official ``eval_copy_detection.py`` descriptor, from one forward pass."""
    out = extractor.backbone.forward_tokens(batch.to(extractor.device, extractor.dtype))
    return torch.cat([out.cls, gem_pool(out.patches)], dim=1).float()


def descriptor_fn(extractor: FeatureExtractor, kind: str = "cls") -> BatchFeatures:
    """Batch -> L2-normalised descriptors. ``"cls"``: the final-normed CLS token. ``"cls+gem"``:
    the copy-detection descriptor of the DINO paper, CLS concatenated with GeM(p=4) of the
    final-normed last-block patch tokens (without the paper's learned whitening).

    Example:
        >>> import dinofeat
        >>> model = dinofeat.load({"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2,
        ...                        "img_size": 32}, pretrained=False, device="cpu")
        >>> descriptor_fn(model, "cls+gem")(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 64])
    """
    if kind not in DESCRIPTOR_KINDS:
        raise ValueError(f"unknown descriptor kind {kind!r}; choose from {list(DESCRIPTOR_KINDS)}")

    def compute(batch: torch.Tensor) -> torch.Tensor:
        features = extractor(batch) if kind == "cls" else cls_gem(extractor, batch)
        return torch.nn.functional.normalize(features.float(), dim=1)

    return compute
