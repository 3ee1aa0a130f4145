"""Dense features: what is done with the patch tokens (PCA pictures, similarity maps, correspondences,
segmentation, upsampling)."""

from dinofeat.dense.pca import (
    PCAProjection,
    attention_foreground,
    first_component_mask,
    fit_pca,
    foreground_mask,
)

__all__ = ["PCAProjection", "attention_foreground", "first_component_mask", "fit_pca", "foreground_mask"]
