"""dinofeat: DINO self-supervised vision features.

Example:
    >>> import dinofeat
    >>> model = dinofeat.load("vit_s16", pretrained=False, device="cpu")
    >>> model.embed_dim
    384
"""

from dinofeat.config.preprocess import PreprocessConfig
from dinofeat.export.onnx import export_onnx
from dinofeat.features.extractor import FeatureExtractor
from dinofeat.features.masks import attention_masks
from dinofeat.hub.loading import load
from dinofeat.models.dinov3.config import DinoV3Config
from dinofeat.models.resnet.config import ResNetConfig
from dinofeat.models.vit.config import ViTConfig
from dinofeat.registry import HubSource, ModelSpec, get_spec, list_models
from dinofeat.utils.errors import (
    DinofeatError,
    GatedModelError,
    HubUploadError,
    ImageReadError,
    MissingExtraError,
    OfflineModelError,
    SetupError,
    WeightsMismatchError,
)

__version__ = "0.1.0"

__all__ = [
    "DinoV3Config",
    "DinofeatError",
    "FeatureExtractor",
    "GatedModelError",
    "HubSource",
    "HubUploadError",
    "ImageReadError",
    "MissingExtraError",
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
