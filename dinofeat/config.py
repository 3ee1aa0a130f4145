"""Typed descriptions of a backbone and of its preprocessing.

These dataclasses are the vocabulary shared by the model registry, the Hub format
(``config.json``), the trainer's export and the builders in :mod:`dinofeat.models`.
They round-trip through plain JSON dictionaries with :func:`arch_from_dict` /
``to_dict()``; unknown keys are an error, never silently ignored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
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


#: ``ffn_layer`` values of the official DINOv3 builder -> SwiGLU hidden-width alignment (None: GELU MLP).
DINOV3_FFN_ALIGN: dict[str, int | None] = {"mlp": None, "swiglu": 8, "swiglu32": 32, "swiglu64": 64,
                                           "swiglu128": 128}
#: ``norm_layer`` values of the official DINOv3 builder -> LayerNorm epsilon.
DINOV3_NORM_EPS: dict[str, float] = {"layernorm": 1e-6, "layernormbf16": 1e-5}
DINOV3_ROPE_DTYPES = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class DinoV3Config:
    """Hyper-parameters of a DINOv3 RoPE Vision Transformer, named as the official builder's keywords.

    The defaults are the official ``DinoVisionTransformer`` defaults; the released backbones set
    ``n_storage_tokens=4, layerscale_init=1e-5, norm_layer="layernormbf16", mask_k_bias=True,
    pos_embed_rope_rescale_coords=2, pos_embed_rope_dtype="fp32"`` (see :mod:`dinofeat.registry`).

    Attributes:
        embed_dim: Token width D.
        depth: Number of blocks.
        num_heads: Attention heads per block.
        patch_size: Side of a square patch in pixels.
        in_chans: Input channels.
        img_size: Accepted for the official signature; no effect (RoPE has no position table).
        ffn_ratio: FFN hidden width as a multiple of ``embed_dim`` (SwiGLU then takes 2/3 of it, aligned).
        ffn_layer: ``"mlp"`` (GELU) or ``"swiglu"`` / ``"swiglu32"`` / ``"swiglu64"`` / ``"swiglu128"``.
        ffn_bias: Bias in the FFN linears.
        proj_bias: Bias in the attention output projection.
        qkv_bias: Bias in the qkv projection.
        mask_k_bias: The qkv bias is multiplied by a stored ``bias_mask`` (zero for the keys).
        n_storage_tokens: Storage (register) tokens after CLS.
        layerscale_init: Initial LayerScale value; None: no LayerScale.
        norm_layer: ``"layernorm"`` (eps 1e-6) or ``"layernormbf16"`` (eps 1e-5).
        untie_cls_and_patch_norms: CLS and storage tokens get their own final norm (``cls_norm``).
        untie_global_and_local_cls_norm: Adds ``local_cls_norm``, used in training only.
        pos_embed_rope_base: RoPE period base; None to use ``min_period`` / ``max_period`` instead.
        pos_embed_rope_min_period: Shortest RoPE period (with ``max_period``, instead of ``base``).
        pos_embed_rope_max_period: Longest RoPE period.
        pos_embed_rope_normalize_coords: Patch-centre coordinates divided by each side (``"separate"``)
            or by the longer (``"max"``) / shorter (``"min"``) side.
        pos_embed_rope_shift_coords: Training-time coordinate augmentation (stored; eval never uses it).
        pos_embed_rope_jitter_coords: Training-time coordinate augmentation (stored; eval never uses it).
        pos_embed_rope_rescale_coords: Training-time coordinate augmentation (stored; eval never uses it).
        pos_embed_rope_dtype: dtype of the RoPE periods, angles and rotated q / k.
    """

    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int = 16
    in_chans: int = 3
    img_size: int = 224
    ffn_ratio: float = 4.0
    ffn_layer: Literal["mlp", "swiglu", "swiglu32", "swiglu64", "swiglu128"] = "mlp"
    ffn_bias: bool = True
    proj_bias: bool = True
    qkv_bias: bool = True
    mask_k_bias: bool = False
    n_storage_tokens: int = 0
    layerscale_init: float | None = None
    norm_layer: Literal["layernorm", "layernormbf16"] = "layernorm"
    untie_cls_and_patch_norms: bool = False
    untie_global_and_local_cls_norm: bool = False
    pos_embed_rope_base: float | None = 100.0
    pos_embed_rope_min_period: float | None = None
    pos_embed_rope_max_period: float | None = None
    pos_embed_rope_normalize_coords: Literal["min", "max", "separate"] = "separate"
    pos_embed_rope_shift_coords: float | None = None
    pos_embed_rope_jitter_coords: float | None = None
    pos_embed_rope_rescale_coords: float | None = None
    pos_embed_rope_dtype: Literal["fp32", "fp16", "bf16"] = "bf16"
    family: Literal["dinov3"] = "dinov3"

    def __post_init__(self) -> None:
        for name in ("embed_dim", "depth", "num_heads", "patch_size", "in_chans", "img_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"DinoV3Config.{name} must be a positive integer, got {value!r}")
        if self.embed_dim % (4 * self.num_heads):
            raise ValueError(f"DinoV3Config.embed_dim ({self.embed_dim}) must be divisible by 4 * num_heads "
                             f"({4 * self.num_heads}): RoPE splits each head into four quarters")
        choices: dict[str, Sequence[str]] = {
            "ffn_layer": list(DINOV3_FFN_ALIGN),
            "norm_layer": list(DINOV3_NORM_EPS),
            "pos_embed_rope_normalize_coords": ["min", "max", "separate"],
            "pos_embed_rope_dtype": DINOV3_ROPE_DTYPES,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"DinoV3Config.{name} must be one of {list(allowed)}, "
                                 f"got {getattr(self, name)!r}")
        if not isinstance(self.n_storage_tokens, int) or self.n_storage_tokens < 0:
            raise ValueError(f"DinoV3Config.n_storage_tokens must be >= 0, got {self.n_storage_tokens!r}")
        periods = (self.pos_embed_rope_min_period, self.pos_embed_rope_max_period)
        by_range = self.pos_embed_rope_base is None and all(p is not None for p in periods)
        by_base = self.pos_embed_rope_base is not None and all(p is None for p in periods)
        if not (by_range or by_base):
            raise ValueError("DinoV3Config: give either pos_embed_rope_base or both "
                             "pos_embed_rope_min_period and pos_embed_rope_max_period, "
                             f"got base={self.pos_embed_rope_base}, "
                             f"min/max={periods}")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def num_prefix_tokens(self) -> int:
        """CLS plus storage tokens, which precede the patch tokens in the sequence."""
        return 1 + self.n_storage_tokens

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class DinoV3ConvNeXtConfig:
    """A DINOv3 ConvNeXt (distilled from the ViT-7B), with the official builder's keyword names.

    Attributes:
        depths: Blocks per stage (four stages, e.g. ``(3, 3, 9, 3)`` for ConvNeXt-Tiny).
        dims: Channel width of each stage; the last one is the feature width.
        in_chans: Input channels.
        drop_path_rate: Stochastic depth, linearly increasing over all blocks (training only).
        layer_scale_init_value: Initial value of each block's ``gamma`` (1e-6 for the released models).
        layer_norm_eps: Epsilon of every LayerNorm (fixed at 1e-6 in the official code).
    """

    depths: tuple[int, ...]
    dims: tuple[int, ...]
    in_chans: int = 3
    drop_path_rate: float = 0.0
    layer_scale_init_value: float = 1e-6
    layer_norm_eps: float = 1e-6
    family: Literal["dinov3_convnext"] = "dinov3_convnext"

    def __post_init__(self) -> None:
        for name in ("depths", "dims"):
            values = tuple(getattr(self, name))
            if len(values) != 4 or any(not isinstance(v, int) or v <= 0 for v in values):
                raise ValueError(f"DinoV3ConvNeXtConfig.{name} must be four positive integers, "
                                 f"got {values!r}")
            object.__setattr__(self, name, values)  # JSON gives lists; keep the frozen config hashable
        if not isinstance(self.in_chans, int) or self.in_chans <= 0:
            raise ValueError(f"DinoV3ConvNeXtConfig.in_chans must be a positive integer, "
                             f"got {self.in_chans!r}")

    @property
    def embed_dim(self) -> int:
        return self.dims[-1]

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "depths": list(self.depths), "dims": list(self.dims)}


ArchConfig: TypeAlias = ViTConfig | ResNetConfig | DinoV3Config | DinoV3ConvNeXtConfig


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


#: ``family`` value -> config class: the one table a new backbone family is added to.
ARCH_FAMILIES: dict[str, type[ArchConfig]] = {
    "vit": ViTConfig,
    "resnet": ResNetConfig,
    "dinov3_convnext": DinoV3ConvNeXtConfig,
    "dinov3": DinoV3Config,
}


def arch_from_dict(data: dict[str, Any]) -> ArchConfig:
    """Build an architecture config (:data:`ARCH_FAMILIES`) from its ``to_dict()`` form.

    A dict without ``family`` is taken as ViT hyper-parameters, so that
    ``{"patch_size": 16, "embed_dim": 384, "depth": 12, "num_heads": 6}`` is enough.
    """
    family = data.get("family", "vit")
    cls = ARCH_FAMILIES.get(family)
    if cls is None:
        raise ValueError(f"unknown architecture family {family!r}; expected one of {sorted(ARCH_FAMILIES)}")
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
        patch: int | None = getattr(self.arch, "patch_size", None)  # a CNN has none
        return patch
