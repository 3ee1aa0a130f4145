"""dinofeat: DINO self-supervised vision features.

Example:
    >>> import dinofeat
    >>> model = dinofeat.load("vit_s16", pretrained=False, device="cpu")
    >>> model.embed_dim
    384
"""

from dinofeat.config import DinoV3Config, HubSource, ModelSpec, PreprocessConfig, ResNetConfig, ViTConfig
from dinofeat.errors import (
    DinofeatError,
    GatedModelError,
    HubUploadError,
    ImageReadError,
    OfflineModelError,
    SetupError,
    WeightsMismatchError,
)
from dinofeat.extractor import FeatureExtractor
from dinofeat.loading import load
from dinofeat.masks import attention_masks
from dinofeat.onnx_export import export_onnx
from dinofeat.registry import get_spec, list_models

__version__ = "0.1.0"

__all__ = [
    "DinoV3Config",
    "DinofeatError",
    "FeatureExtractor",
    "GatedModelError",
    "HubSource",
    "HubUploadError",
    "ImageReadError",
    "ModelSpec",
    "OfflineModelError",
    "PreprocessConfig",
    "ResNetConfig",
    "SetupError",
    "ViTConfig",
    "WeightsMismatchError",
    "__version__",
    "attention_masks",
    "export_onnx",
    "get_spec",
    "list_models",
    "load",
]
