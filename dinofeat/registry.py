"""The model zoo: one table of data, the single source of truth for every model name.

``load()``, ``hubconf.py``, the CLI, the docs model table and the tests all read
:data:`ZOO`. Adding a model means adding one :class:`~dinofeat.registry.ModelSpec` here.

Example:
    >>> import dinofeat
    >>> [spec.name for spec in dinofeat.list_models()][:3]
    ['vit_s16', 'vit_s8', 'vit_b16']
    >>> dinofeat.get_spec("vit_s8").embed_dim
    384
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Literal

from dinofeat.config.preprocess import PreprocessConfig
from dinofeat.models import FAMILIES, ArchConfig
from dinofeat.models.dinov3.config import DinoV3Config
from dinofeat.models.dinov3_convnext.config import DinoV3ConvNeXtConfig
from dinofeat.models.resnet.config import ResNetConfig
from dinofeat.models.vit.config import ViTConfig

_DINO_URL = "https://dl.fbaipublicfiles.com/dino"
_DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2"
_DINOV2_PAPER = "arXiv:2304.07193"
_REGISTERS_PAPER = "arXiv:2309.16588"


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
    """One entry of the model zoo: architecture, weights source, preprocessing and published figures."""

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


def _dino_vit(name: str, timm_name: str, url_stem: str, patch: int, dim: int, heads: int,
              knn: float, linear: float, params: float) -> ModelSpec:
    return ModelSpec(
        name=name,
        arch=ViTConfig(patch_size=patch, embed_dim=dim, depth=12, num_heads=heads),
        source=HubSource(
            repo_id=f"timm/{timm_name}.dino",
            url=f"{_DINO_URL}/{url_stem}/{url_stem}.pth",
        ),
        description=f"DINO ViT-{'S' if dim == 384 else 'B'}/{patch}, ImageNet-1k, self-supervised",
        knn_top1=knn,
        linear_top1=linear,
        params_millions=params,
    )


def _dinov2(size: str, dim: int, depth: int, heads: int, registers: bool,
            knn: float, linear: float, params: float) -> ModelSpec:
    letter = size[0]
    reg = "_reg" if registers else ""
    reg4 = "_reg4" if registers else ""
    timm_name = f"vit_{size}_patch14{reg4}_dinov2.lvd142m"
    giant = size == "giant"
    return ModelSpec(
        name=f"dinov2_vit{letter}14{reg}",
        arch=ViTConfig(
            patch_size=14,
            embed_dim=dim,
            depth=depth,
            num_heads=heads,
            mlp_ratio=2.66667 * 2 if giant else 4.0,
            mlp="swiglu" if giant else "gelu",
            img_size=518,
            layer_scale_init=1e-5,
            num_register_tokens=4 if registers else 0,
            # timm folds the CLS position into cls_token for the register models.
            pos_embed_has_cls=not registers,
            # The official DINOv2 hub entry points resample the register models by size, antialiased.
            interpolate_offset=0.0 if registers else 0.1,
            interpolate_antialias=registers,
        ),
        source=HubSource(
            repo_id=f"timm/{timm_name}",
            url=f"{_DINOV2_URL}/dinov2_vit{letter}14/dinov2_vit{letter}14{reg4}_pretrain.pth",
        ),
        description=f"DINOv2 ViT-{letter.upper()}/14{' with 4 registers' if registers else ''}, LVD-142M",
        paper=_REGISTERS_PAPER if registers else _DINOV2_PAPER,
        knn_top1=knn,
        linear_top1=linear,
        params_millions=params,
    )


_ENTRIES: list[ModelSpec] = [
    _dino_vit("vit_s16", "vit_small_patch16_224", "dino_deitsmall16_pretrain", 16, 384, 6, 74.5, 77.0, 21),
    _dino_vit("vit_s8", "vit_small_patch8_224", "dino_deitsmall8_pretrain", 8, 384, 6, 78.3, 79.7, 21),
    _dino_vit("vit_b16", "vit_base_patch16_224", "dino_vitbase16_pretrain", 16, 768, 12, 76.1, 78.2, 85),
    _dino_vit("vit_b8", "vit_base_patch8_224", "dino_vitbase8_pretrain", 8, 768, 12, 77.4, 80.1, 85),
    ModelSpec(
        name="resnet50",
        arch=ResNetConfig(),
        # No Hub copy of DINO's ResNet-50 exists: the official file is fetched by URL.
        source=HubSource(
            repo_id=None,
            filename="dino_resnet50_pretrain.pth",
            url=f"{_DINO_URL}/dino_resnet50_pretrain/dino_resnet50_pretrain.pth",
        ),
        description="DINO ResNet-50, ImageNet-1k, self-supervised",
        knn_top1=67.5,
        linear_top1=75.3,
        params_millions=23,
    ),
    _dinov2("small", 384, 12, 6, False, 79.0, 81.1, 21),
    _dinov2("base", 768, 12, 12, False, 82.1, 84.5, 86),
    _dinov2("large", 1024, 24, 16, False, 83.5, 86.3, 300),
    _dinov2("giant", 1536, 40, 24, False, 83.5, 86.5, 1100),
    _dinov2("small", 384, 12, 6, True, 79.1, 80.9, 21),
    _dinov2("base", 768, 12, 12, True, 82.0, 84.6, 86),
    _dinov2("large", 1024, 24, 16, True, 83.8, 86.7, 300),
    _dinov2("giant", 1536, 40, 24, True, 83.7, 87.1, 1100),
]

_DINOV3_URL = "https://dl.fbaipublicfiles.com/dinov3"
_DINOV3_PAPER = "arXiv:2508.10104"
#: The DINOv3 weights are not Apache: accept the licence on the Hub repository (or Meta's form) first.
DINOV3_LICENSE = "dinov3-license (DINOv3 License, not Apache; gated: accept it on the Hub repo first)"
#: Satellite (SAT-493M) normalisation, from the official README.
SAT_MEAN: tuple[float, float, float] = (0.430, 0.411, 0.296)
SAT_STD: tuple[float, float, float] = (0.213, 0.156, 0.143)


def _dinov3_vit(arch_name: str, timm_name: str, weights: str, dim: int, depth: int, heads: int,
                ffn: Literal["mlp", "swiglu", "swiglu64"], ffn_ratio: float, params: float, *,
                sat: bool = False, qkv_bias: bool = True, local_cls_norm: bool = False) -> ModelSpec:
    """A released DINOv3 ViT (official hub builder values; ``weights`` is the file's hash)."""
    data = "sat493m" if sat else "lvd1689m"
    return ModelSpec(
        name=f"dinov3_{arch_name}{'_sat' if sat else ''}",
        arch=DinoV3Config(
            embed_dim=dim, depth=depth, num_heads=heads, ffn_ratio=ffn_ratio,
            ffn_layer=ffn,
            qkv_bias=qkv_bias, mask_k_bias=True, n_storage_tokens=4, layerscale_init=1e-5,
            norm_layer="layernormbf16", untie_global_and_local_cls_norm=local_cls_norm,
            pos_embed_rope_base=100.0, pos_embed_rope_normalize_coords="separate",
            pos_embed_rope_rescale_coords=2, pos_embed_rope_dtype="fp32",
        ),
        source=HubSource(
            repo_id=f"timm/{timm_name}.{data}",
            # Provenance only: Meta e-mails time-limited signed links to this file.
            url=f"{_DINOV3_URL}/dinov3_{arch_name}/dinov3_{arch_name}_pretrain_{data}-{weights}.pth",
        ),
        description=(f"DINOv3 ViT-{arch_name[3:].replace('plus', '+').replace('16', '').upper()}/16, "
                     f"{'SAT-493M (satellite)' if sat else 'LVD-1689M'}, RoPE, 4 storage tokens"),
        preprocess=PreprocessConfig(mean=SAT_MEAN, std=SAT_STD) if sat else PreprocessConfig(),
        license=DINOV3_LICENSE,
        paper=_DINOV3_PAPER,
        params_millions=params,
    )


def _dinov3_convnext(size: str, depths: tuple[int, ...], dims: tuple[int, ...], weights_hash: str,
                     params: float) -> ModelSpec:
    """A DINOv3 ConvNeXt (LVD-1689M, distilled from the ViT-7B): timm's Hub copy, the official file's URL."""
    stem = f"dinov3_convnext_{size}"
    return ModelSpec(
        name=stem,
        arch=DinoV3ConvNeXtConfig(depths=depths, dims=dims),
        source=HubSource(
            repo_id=f"timm/convnext_{size}.dinov3_lvd1689m",
            # Gated: Meta e-mails signed links to this file (load it with arch=<this name>).
            url=f"https://dl.fbaipublicfiles.com/dinov3/{stem}/{stem}_pretrain_lvd1689m-{weights_hash}.pth",
        ),
        description=f"DINOv3 ConvNeXt-{size.capitalize()}, distilled from ViT-7B, LVD-1689M",
        # The official classification evaluation transform (resize 256, centre crop 224, ImageNet mean/std).
        preprocess=PreprocessConfig(),
        license=DINOV3_LICENSE,
        paper=_DINOV3_PAPER,
        params_millions=params,
        extra={"transformers_repo": f"facebook/dinov3-convnext-{size}-pretrain-lvd1689m"},
    )


_ENTRIES += [
    _dinov3_vit("vits16", "vit_small_patch16_dinov3", "08c60483", 384, 12, 6, "mlp", 4, 21.6),
    _dinov3_vit("vits16plus", "vit_small_plus_patch16_dinov3", "4057cbaa", 384, 12, 6, "swiglu", 6, 28.7),
    _dinov3_vit("vitb16", "vit_base_patch16_dinov3", "73cec8be", 768, 12, 12, "mlp", 4, 85.7),
    _dinov3_vit("vitl16", "vit_large_patch16_dinov3", "8aa4cbdd", 1024, 24, 16, "mlp", 4, 303.2),
    _dinov3_vit("vith16plus", "vit_huge_plus_patch16_dinov3", "7c1da9a5", 1280, 32, 20, "swiglu", 6, 840.6),
    _dinov3_vit("vit7b16", "vit_7b_patch16_dinov3", "a955f4ea", 4096, 40, 32, "swiglu64", 3, 6716.0,
                qkv_bias=False, local_cls_norm=True),
    _dinov3_vit("vitl16", "vit_large_patch16_dinov3", "eadcf0ff", 1024, 24, 16, "mlp", 4, 303.2,
                sat=True, local_cls_norm=True),
    _dinov3_vit("vit7b16", "vit_7b_patch16_dinov3", "a6675841", 4096, 40, 32, "swiglu64", 3, 6716.0,
                sat=True, qkv_bias=False, local_cls_norm=True),
    _dinov3_convnext("tiny", (3, 3, 9, 3), (96, 192, 384, 768), "21b726bb", 27.8),
    _dinov3_convnext("small", (3, 3, 27, 3), (96, 192, 384, 768), "296db49d", 49.5),
    _dinov3_convnext("base", (3, 3, 27, 3), (128, 256, 512, 1024), "801f2ba9", 87.6),
    _dinov3_convnext("large", (3, 3, 27, 3), (192, 384, 768, 1536), "61fa432d", 196.2),
]

#: dinofeat's own model, trained by ``dinofeat-train`` and shipped inside the wheel (no network needed).
BUNDLED_MODEL = "vit_t16_d4_imagenette"

_ENTRIES.append(
    ModelSpec(
        name=BUNDLED_MODEL,
        arch=ViTConfig(patch_size=16, embed_dim=192, depth=4, num_heads=3, img_size=96),
        source=HubSource(layout="dinofeat", package_path=f"weights/{BUNDLED_MODEL}"),
        description="dinofeat's own ViT-Tiny/16 (4 blocks), DINO on Imagenette at 96 px, bundled",
        preprocess=PreprocessConfig(resize=110, crop=96),
        # Trained on ImageNet images (the Imagenette subset), so the ImageNet terms apply.
        license="imagenet-terms (non-commercial research and education)",
        params_millions=1.9,
        extra={
            "training_data": "imagenette2/train (labels unused)",
            # The preset's 12 epochs, then the same run resumed with run.epochs=36 (a warm restart of
            # the cosine schedules at epoch 12; see docs/training.md).
            "training_command": "dinofeat-train train --preset imagenette_tiny "
                                "--data ../shared/data/imagenette2/train --output-dir runs/ship, "
                                "then the same command with --set run.epochs=36 "
                                "--set optim.freeze_last_layer=36",
            "training_time": "36 epochs (10,620 iterations of batch 32), 184 min of training on the 2-core "
                             "CPU (61 min for epochs 0-11, 123 min for epochs 12-35; about 31-33 images/s)",
            "knn_command": "dinofeat knn --model vit_t16_d4_imagenette [--random-init] "
                           "--train ../shared/data/imagenette2/train --val ../shared/data/imagenette2/val "
                           "--k 10 20 100 200 -o knn.json",
            # Weighted 20-NN (top-1, top-5) on imagenette2/val, measured with the command above.
            "imagenette_knn20": (38.1, 80.9),
            "imagenette_knn20_random_init": (28.3, 73.0),
        },
    )
)

ZOO: dict[str, ModelSpec] = {spec.name: spec for spec in _ENTRIES}
if len(ZOO) != len(_ENTRIES):
    raise RuntimeError("duplicate model names in the dinofeat registry")


def list_models(family: str | None = None) -> list[ModelSpec]:
    """All zoo entries in table order, or those of one architecture ``family`` (``"vit"``, ``"dinov3"``, ...).

    Raises:
        ValueError: unknown family (the message lists the known ones).
    """
    if family is not None and family not in FAMILIES:
        raise ValueError(f"unknown architecture family {family!r}; expected one of {sorted(FAMILIES)}")
    return [spec for spec in ZOO.values() if family is None or spec.arch.family == family]


def get_spec(name: str) -> ModelSpec:
    """The zoo entry called ``name``.

    Raises:
        KeyError: unknown name; the message lists close matches and every known name.
    """
    try:
        return ZOO[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(ZOO), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise KeyError(
            f"unknown dinofeat model {name!r}.{hint} Known models: {', '.join(ZOO)}"
        ) from None
