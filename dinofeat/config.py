"""Typed descriptions of a backbone and of its preprocessing.

These dataclasses are the vocabulary shared by the model registry, the Hub format
(``config.json``), the trainer's export and the builders in :mod:`dinofeat.models`.
They round-trip through plain JSON dictionaries with :func:`arch_from_dict` /
``to_dict()``; unknown keys are an error, never silently ignored.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from dinofeat.bands import BandNormalization

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ViTConfig:
    """Hyper-parameters of a DINO / DINOv2 Vision Transformer.

    Attributes:
        patch_size: Side of a square patch in pixels.
        embed_dim: Token width D.
        depth: Number of transformer blocks.
        num_heads: Attention heads per block.
        mlp_ratio: Hidden width of the MLP as a multiple of ``embed_dim``.
        qkv_bias: Whether the qkv projection has a bias.
        layer_norm_eps: Epsilon of every LayerNorm (1e-6 for the DINO models).
        img_size: Training resolution; the stored position grid is ``img_size // patch_size``.
        num_register_tokens: DINOv2 register tokens (0 or 4).
        layer_scale_init: Initial LayerScale value (DINOv2 uses 1e-5); ``None`` disables LayerScale.
        mlp: ``"gelu"`` for the standard MLP, ``"swiglu"`` for DINOv2-giant's packed SwiGLU.
        pos_embed_has_cls: Whether ``pos_embed`` has a row for the CLS token (DINO, DINOv2 without
            registers) or covers the patches only (DINOv2 with registers, in timm's layout).
        interpolate_offset: The official ``+0.1`` of the position-embedding resampling; 0 resamples to a size.
        interpolate_antialias: Antialiased bicubic resampling (DINOv2 register models).
        drop_path_rate: Stochastic depth, used by the trainer's student only.
        in_chans: Input channels of the patch embedding (3 for RGB; C for a C-band model).
    """

    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    layer_norm_eps: float = 1e-6
    img_size: int = 224
    num_register_tokens: int = 0
    layer_scale_init: float | None = None
    mlp: Literal["gelu", "swiglu"] = "gelu"
    pos_embed_has_cls: bool = True
    interpolate_offset: float = 0.1
    interpolate_antialias: bool = False
    drop_path_rate: float = 0.0
    family: Literal["vit"] = "vit"
    in_chans: int = 3

    def __post_init__(self) -> None:
        for name in ("patch_size", "embed_dim", "depth", "num_heads", "img_size", "in_chans"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"ViTConfig.{name} must be a positive integer, got {value!r}")
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"ViTConfig.embed_dim ({self.embed_dim}) must be divisible by num_heads ({self.num_heads})"
            )
        if self.img_size % self.patch_size:
            raise ValueError(
                f"ViTConfig.img_size ({self.img_size}) must be a multiple of patch_size ({self.patch_size})"
            )
        if self.num_register_tokens < 0:
            raise ValueError("ViTConfig.num_register_tokens must be >= 0")

    @property
    def num_prefix_tokens(self) -> int:
        """CLS plus register tokens, which precede the patch tokens in the sequence."""
        return 1 + self.num_register_tokens

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ResNetConfig:
    """A ResNet trunk (DINO's ResNet-50): global-average-pooled features of width 2048."""

    depth: Literal[50] = 50
    family: Literal["resnet"] = "resnet"

    @property
    def embed_dim(self) -> int:
        return 2048

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


ArchConfig: TypeAlias = ViTConfig | ResNetConfig


@dataclass(frozen=True)
class PreprocessConfig:
    """Evaluation preprocessing: resize the shorter side, centre-crop, normalise.

    The default is the official DINO evaluation transform: bicubic resize of the shorter
    side to 256, centre crop 224, ImageNet mean and std. A C-band model has ``bands`` (its
    per-band normalisation, which replaces ``mean`` / ``std``) and takes band arrays, not RGB images.
    """

    resize: int = 256
    crop: int = 224
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    bands: BandNormalization | None = None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if self.bands is None:
            del data["bands"]  # RGB configs keep their published form
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessConfig:
        _check_keys(cls, data, "preprocess")
        values = dict(data)
        for key in ("mean", "std"):
            if key in values:
                values[key] = tuple(float(v) for v in values[key])
        if values.get("bands") is not None:
            values["bands"] = BandNormalization.from_dict(values["bands"])
        return cls(**values)


def _check_keys(cls: type, data: dict[str, Any], what: str) -> None:
    fields = dataclasses.fields(cls)
    allowed = {f.name for f in fields}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValueError(f"unknown {what} config keys {unknown}; allowed: {sorted(allowed)}")
    required = [f.name for f in fields
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in data]
    if missing:
        raise ValueError(f"{what} config lacks {missing} (required: {required})")


def arch_from_dict(data: dict[str, Any]) -> ArchConfig:
    """Build a :class:`ViTConfig` or :class:`ResNetConfig` from its ``to_dict()`` form.

    A dict without ``family`` is taken as ViT hyper-parameters, so that
    ``{"patch_size": 16, "embed_dim": 384, "depth": 12, "num_heads": 6}`` is enough.
    """
    family = data.get("family", "vit")
    cls: type[ViTConfig] | type[ResNetConfig]
    if family == "vit":
        cls = ViTConfig
    elif family == "resnet":
        cls = ResNetConfig
    else:
        raise ValueError(f"unknown architecture family {family!r}; expected 'vit' or 'resnet'")
    _check_keys(cls, data, "architecture")
    return cls(**data)


@dataclass(frozen=True)
class HubSource:
    """Where a zoo model's weights live.

    Attributes:
        repo_id: Hugging Face Hub repository, e.g. ``"timm/vit_small_patch16_224.dino"``.
        filename: File inside the repository.
        revision: Git revision to download (a commit hash pins it).
        layout: Key layout of the file: ``"timm"`` (timm / official DINO keys), ``"dinov2"``
            (official DINOv2 keys), ``"transformers"`` (HF transformers ViTModel / Dinov2Model),
            or ``"dinofeat"`` (this library's Hub format: config.json + model.safetensors).
        url: The official download URL, recorded for provenance.
        package_path: For a model bundled in the wheel: the folder inside the package.
    """

    repo_id: str | None = None
    filename: str = "model.safetensors"
    revision: str = "main"
    layout: Literal["timm", "dinov2", "transformers", "dinofeat"] = "timm"
    url: str | None = None
    package_path: str | None = None


@dataclass(frozen=True)
class ModelSpec:
    """One entry of the model zoo. See :mod:`dinofeat.registry`."""

    name: str
    arch: ArchConfig
    source: HubSource
    description: str
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    license: str = "apache-2.0"
    paper: str = "arXiv:2104.14294"
    knn_top1: float | None = None
    linear_top1: float | None = None
    params_millions: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def embed_dim(self) -> int:
        return self.arch.embed_dim

    @property
    def patch_size(self) -> int | None:
        return self.arch.patch_size if isinstance(self.arch, ViTConfig) else None
