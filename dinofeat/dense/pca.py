"""PCA of patch tokens: the coloured pictures of the DINOv2 / DINOv3 papers, and foreground masks.

One :class:`PCAProjection` is fitted on the patch tokens of one or several images (or video
frames) and then applied to any of them, so that the same colour means the same direction in
feature space everywhere. The fit forms the D x D covariance in float32 and diagonalises it in
float64 with ``torch.linalg.eigh``: exact (unlike a randomised low-rank SVD), on the tokens' own
device, and on 2 CPU cores as fast as or faster than ``faiss.PCAMatrix`` at the sizes the dense
tools meet (``bench/bench_dense.py``; figures in docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from dinofeat.features.masks import attention_masks

#: Projections below / above these percentiles of the fitted ones map to 0 / 1 in RGB, so a few
#: outlier tokens do not wash out the picture.
DEFAULT_CLIP_PERCENTILE = 1.0

QUANTILE_MAX_VALUES = 2**24 - 1

TokenInput = torch.Tensor | Sequence[torch.Tensor]
MaskInput = torch.Tensor | Sequence[torch.Tensor] | None


@dataclass(frozen=True)
class PCAProjection:
    """A fitted PCA of D-dim tokens, and the range that scales each component to [0, 1].

    Attributes:
        mean: (D,) mean of the fitted tokens.
        components: (k, D) unit principal directions, strongest first; each sign is chosen so
            that its largest-magnitude loading is positive (the SVD leaves it open).
        explained_variance: (k,) variance of the fitted tokens along each component.
        low: (k,) projection that maps to 0 in :meth:`to_rgb` (a low percentile of the fit).
        high: (k,) projection that maps to 1.
    """

    mean: torch.Tensor
    components: torch.Tensor
    explained_variance: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor

    @property
    def n_components(self) -> int:
        return int(self.components.shape[0])

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """(..., D) tokens -> (..., k) coordinates along the components."""
        if tokens.shape[-1] != self.mean.shape[0]:
            raise ValueError(f"tokens have {tokens.shape[-1]} dims but the PCA was fitted on "
                             f"{self.mean.shape[0]}")
        centred = tokens.to(self.mean.device, torch.float32) - self.mean
        return centred @ self.components.T

    def scaled(self, tokens: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., k) projections mapped by the fitted range to [0, 1] (clipped)."""
        span = (self.high - self.low).clamp_min(1e-12)
        return ((self.project(tokens) - self.low) / span).clamp(0.0, 1.0)

    def to_rgb(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The first three components as colours.

        Args:
            tokens: (N, h, w, D) patch tokens (or any (..., D)).
            mask: Optional bool (N, h, w) foreground; patches outside it are black.

        Returns:
            (N, h, w, 3) float32 in [0, 1].
        """
        if self.n_components < 3:
            raise ValueError(f"to_rgb needs at least 3 components, the PCA has {self.n_components}")
        rgb = self.scaled(tokens)[..., :3]
        if mask is not None:
            if mask.shape != rgb.shape[:-1]:
                raise ValueError(f"mask has shape {tuple(mask.shape)}, tokens {tuple(tokens.shape[:-1])}")
            rgb = rgb * mask.to(rgb.device, torch.float32).unsqueeze(-1)
        return rgb


def _flatten(tokens: TokenInput, mask: MaskInput) -> torch.Tensor:
    """(M, D) float32 rows of ``tokens`` kept by ``mask``."""
    parts = [tokens] if isinstance(tokens, torch.Tensor) else list(tokens)
    if not parts:
        raise ValueError("fit_pca needs tokens, got an empty list")
    if mask is None:
        masks: list[torch.Tensor | None] = [None] * len(parts)
    else:
        masks = [mask] if isinstance(mask, torch.Tensor) else list(mask)
        if len(masks) != len(parts):
            raise ValueError(f"{len(masks)} masks for {len(parts)} token tensors")
    rows = []
    for index, (part, keep) in enumerate(zip(parts, masks, strict=True)):
        if part.ndim not in (2, 3, 4):
            raise ValueError(f"tokens #{index} must be (N, h, w, D), (h, w, D) or (M, D), "
                             f"got {tuple(part.shape)}")
        if keep is not None:
            if keep.dtype != torch.bool or keep.shape != part.shape[:-1]:
                raise ValueError(f"mask #{index} must be bool of shape {tuple(part.shape[:-1])}, got "
                                 f"{keep.dtype} {tuple(keep.shape)}")
            part = part[keep.to(part.device)]
        rows.append(part.reshape(-1, part.shape[-1]).float())
    if len({r.shape[1] for r in rows}) > 1:
        raise ValueError(f"token tensors differ in dimension: {sorted({r.shape[1] for r in rows})}")
    return torch.cat(rows)


def fit_pca(tokens: TokenInput, n_components: int = 3, mask: MaskInput = None, *,
            clip_percentile: float = DEFAULT_CLIP_PERCENTILE) -> PCAProjection:
    """Fit one PCA on the (masked) tokens of one or several images.

    Args:
        tokens: (N, h, w, D) patch tokens, a list of such or of (h, w, D) maps (grids may differ),
            or (M, D) rows.
        n_components: k, at most D and at most the number of fitted tokens.
        mask: Optional bool foreground in the shape of ``tokens`` without D (a list for a list);
            only the tokens it keeps are fitted.
        clip_percentile: The fitted projections' ``p``-th and ``(100 - p)``-th percentiles per
            component become the RGB range (0 for min / max).

    Returns:
        The :class:`PCAProjection`, on the tokens' device.

    Example:
        >>> pca = fit_pca(torch.randn(2, 4, 4, 16))
        >>> pca.to_rgb(torch.randn(1, 4, 4, 16)).shape
        torch.Size([1, 4, 4, 3])
    """
    rows = _flatten(tokens, mask)
    count, dim = rows.shape
    if not 1 <= n_components <= dim:
        raise ValueError(f"n_components must be between 1 and the token dimension {dim}, got {n_components}")
    if count < max(2, n_components):
        raise ValueError(f"fit_pca needs at least {max(2, n_components)} tokens, got {count} "
                         "(is the mask empty?)")
    if not 0.0 <= clip_percentile < 50.0:
        raise ValueError(f"clip_percentile must be in [0, 50), got {clip_percentile}")
    mean = rows.double().mean(dim=0).float()
    centred = rows - mean
    # The O(M D^2) product in float32 (fast), the small D x D eigenproblem in float64 (exact);
    # eigh returns ascending eigenvalues, so the last k columns, reversed, are the strongest.
    covariance = (centred.T @ centred).double() / (count - 1)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
    components = eigenvectors[:, -n_components:].flip(-1).T
    largest = components.abs().argmax(dim=1, keepdim=True)
    components = (components * components.gather(1, largest).sign()).float()
    projections = centred @ components.T
    quantiles = torch.tensor([clip_percentile / 100, 1 - clip_percentile / 100], device=rows.device)
    # torch.quantile refuses inputs of more than 2**24 values: an even subsample of rows sets the range.
    stride = max(1, projections.numel() // QUANTILE_MAX_VALUES + 1)
    low, high = torch.quantile(projections[::stride], quantiles, dim=0)
    return PCAProjection(mean, components, eigenvalues[-n_components:].flip(0).float(), low, high)


def _border(grid: tuple[int, int], device: torch.device) -> torch.Tensor:
    """(h, w) bool: the patches on the edge of the grid."""
    h, w = grid
    edge = torch.ones(h, w, dtype=torch.bool, device=device)
    edge[1:-1, 1:-1] = False
    return edge


def first_component_mask(tokens: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Foreground from the first principal component, as the DINOv2 PCA demo does.

    The first component of the patch tokens usually separates the object from the background;
    which side is which is up to its sign, so the side that covers less of the image border
    is taken as the foreground.

    Args:
        tokens: (N, h, w, D) patch tokens, fitted jointly.
        threshold: Cut on the first component scaled to [0, 1] by its min and max.

    Returns:
        (N, h, w) bool.
    """
    if tokens.ndim != 4:
        raise ValueError(f"tokens must be (N, h, w, D), got {tuple(tokens.shape)}")
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    first = fit_pca(tokens, n_components=1, clip_percentile=0.0).scaled(tokens)[..., 0]
    edge = _border((tokens.shape[1], tokens.shape[2]), first.device).expand_as(first)
    inner = ~edge
    # A grid of at most 2 patches a side is all border: then call the smaller side the foreground.
    border_is_high = first[edge].mean() > first[inner].mean() if inner.any() else first.mean() > 0.5
    if border_is_high:
        first = 1.0 - first
    return first > threshold


def attention_foreground(attention: torch.Tensor, threshold: float = 0.6) -> torch.Tensor:
    """Foreground from the CLS attention: the patches holding ``threshold`` of the head-mean map's mass.

    Args:
        attention: (N, heads, h, w) maps from ``cls_attention`` / ``features(outputs=("attention",))``.
        threshold: Attention mass kept, as in :func:`dinofeat.features.masks.attention_masks`.

    Returns:
        (N, h, w) bool.
    """
    if attention.ndim != 4:
        raise ValueError(f"attention must be (N, heads, h, w), got {tuple(attention.shape)}")
    return attention_masks(attention.float().mean(dim=1), threshold)


MASK_METHODS: tuple[str, ...] = ("first-component", "attention", "none")


def foreground_mask(method: str, tokens: torch.Tensor, attention: torch.Tensor | None = None
                    ) -> torch.Tensor | None:
    """The foreground by name: ``"first-component"``, ``"attention"`` (needs ``attention``) or ``"none"``.

    Returns:
        (N, h, w) bool, or None for ``"none"``.
    """
    if method == "none":
        return None
    if method == "first-component":
        return first_component_mask(tokens)
    if method == "attention":
        if attention is None:
            raise ValueError("the attention foreground needs attention maps (a ViT)")
        return attention_foreground(attention)
    raise ValueError(f"unknown foreground method {method!r}; choose from {', '.join(MASK_METHODS)}")
