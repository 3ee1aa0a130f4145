"""Typed training configuration: one defaults site (the official DINO defaults), presets,
YAML/JSON files and dotted command-line overrides.

Example:
    >>> cfg = resolve_config(preset="imagenette_tiny", overrides=["optim.lr=0.001"])
    >>> cfg.optim.lr
    0.001
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dinofeat.config.preprocess import BandNormalization, PreprocessConfig
from dinofeat.models import ArchConfig, arch_from_dict, family_of
from dinofeat.models.family import with_training_fields
from dinofeat.models.resnet.config import ResNetConfig
from dinofeat.models.vit.config import ViTConfig
from dinofeat.registry import ZOO, get_spec
from dinofeat.training.config.checks import check_config
from dinofeat.training.config.presets import PRESETS
from dinofeat.utils.extras import require


@dataclass
class ModelConfig:
    """Backbone. ``arch``: ``vit_tiny`` / ``vit_small`` / ``vit_base`` (with ``patch_size``, as in
    the official script), ``resnet50``, a zoo name (``vit_s16``), or a :class:`ViTConfig` dict."""

    arch: str | dict[str, Any] = "vit_small"
    patch_size: int = 16
    drop_path_rate: float = 0.1
    # Continued pretraining (dinofeat.training.engine.init_weights): a zoo name, an exported folder or an
    # official .pth whose backbone starts student and teacher; a patch embedding with other input
    # channels is adapted by "repeat" (RGB filters cycled over the bands) or "average".
    init: str | None = None
    patch_embed_adapt: Literal["repeat", "average"] = "repeat"
    distill_teacher: str | None = None  # `dinofeat-train distill --teacher` (training.engine.distill)
    # The same drop-path rate in every block (DINOv2's drop_path_uniform) instead of rising linearly to it.
    drop_path_uniform: bool = False
    # DINOv2 register tokens of a ViT (None: as model.arch / model.init has them). With model.init it must
    # match the initial weights: registers cannot be added to a network trained without them.
    num_register_tokens: int | None = None


@dataclass
class ObjectiveConfig:
    """What is optimised: ``dino`` (DINO, arXiv:2104.14294) or ``dinov2`` (arXiv:2304.07193: the DINO loss on
    the CLS token, the iBOT loss on masked patch tokens of the global crops, KoLeo on the student's CLS;
    dinofeat.training.objectives.dinov2). Every other field applies to dinov2 only."""

    name: Literal["dino", "dinov2"] = "dino"
    # Teacher targets: "softmax" around an EMA centre (loss.center_momentum) or "sinkhorn_knopp".
    centering: Literal["softmax", "sinkhorn_knopp"] = "softmax"
    dino_weight: float = 1.0
    koleo_weight: float = 0.1
    ibot_weight: float = 1.0
    # iBOT head: shared with the DINO head (false, the default recipe) or its own; its sizes default to the
    # head section's, and a shared head needs the same number of prototypes.
    ibot_separate_head: bool = False
    ibot_out_dim: int | None = None
    ibot_hidden_dim: int | None = None
    ibot_bottleneck_dim: int | None = None
    # Share of the global-crop images that get an iBOT mask, and the range of their mask ratios.
    mask_probability: float = 0.5
    mask_ratio: tuple[float, float] = (0.1, 0.5)
    # Continued pretraining: the backbone's lr is 0 for this many epochs while the fresh heads learn
    # (AdamW's moments advance, as for the frozen last layer).
    freeze_backbone_epochs: int = 0


@dataclass
class HeadConfig:
    out_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    nlayers: int = 3
    use_bn: bool = False
    norm_last_layer: bool = True


@dataclass
class LossConfig:
    # Official script defaults (teacher_temp 0.04, no warm-up); the paper recipe is a preset.
    warmup_teacher_temp: float = 0.04
    teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 0
    student_temp: float = 0.1
    center_momentum: float = 0.9


@dataclass
class OptimConfig:
    optimizer: Literal["adamw", "sgd", "lars"] = "adamw"
    lr: float = 0.0005  # for a total batch of 256; scaled linearly
    min_lr: float = 1e-6
    warmup_epochs: int = 10
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    momentum_teacher: float = 0.996
    clip_grad: float = 3.0  # per-tensor; 0 disables
    freeze_last_layer: int = 1
    batch_size_per_gpu: int = 64
    # DINOv2's settings for fine-tuning released weights (1.0 = off): block i of L gets lr *
    # layer_decay ** (L - i), the patch embedding a further patch_embed_lr_mult.
    layer_decay: float = 1.0
    patch_embed_lr_mult: float = 1.0


@dataclass
class CropsConfig:
    global_size: int = 224
    local_size: int = 96
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.4)
    local_crops_number: int = 8


@dataclass
class DataConfig:
    """``path``: an image folder (searched recursively); or ``file_list``: a text file of image paths."""

    path: str | None = None
    file_list: str | None = None
    num_workers: int = 10
    cache_size: int | None = None  # pre-decode every image once, shorter side -> cache_size px
    # "cpu": the official PIL multi-crop in the workers; "device": the workers only decode and draw the
    # random parameters, the crops are made batched on the training device (training/data/device_augment.py).
    augmentation: Literal["cpu", "device"] = "cpu"
    # Multi-band arrays (.npy / .npz / TIFF) with this many bands instead of RGB images (None).
    channels: int | None = None
    channel_layout: Literal["auto", "chw", "hwc"] = "auto"


@dataclass
class BandsConfig:
    """Per-band normalisation (``dinofeat-train stats`` measures it) and the band augmentations
    (dinofeat.training.data.band_augment), used when ``data.channels`` is set."""

    mean: list[float] | None = None
    std: list[float] | None = None
    clip_low: list[float] | None = None
    clip_high: list[float] | None = None
    stretch: Literal["none", "arcsinh"] = "none"
    arcsinh_scale: float = 1.0
    vflip: bool = True
    rot90: bool = False  # for data without an up (galaxies, cells)
    intensity_p: float = 0.8  # per-band gain exp(U(-r, r)) with probability p
    intensity_range: float = 0.2
    noise_p: float = 0.5  # Gaussian noise of std noise_std (in standardised units)
    noise_std: float = 0.1
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 1.0)  # in pixels of the crop


@dataclass
class RunConfig:
    epochs: int = 100
    output_dir: str = "."
    seed: int = 0
    saveckp_freq: int = 20
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"  # auto: fp16 on CUDA (official), fp32 on CPU
    device: str = "auto"
    resume: str | None = "auto"  # "auto": output_dir/checkpoint.pth if present; a path; None: start fresh
    log_every: int = 10
    max_iters_per_epoch: int | None = None  # truncate epochs (benchmarks, smoke runs)
    eval_every: int = 0  # call the evaluation hook every N epochs (0: never)
    # k-NN monitoring (weighted 20-NN of the teacher) on labelled ImageFolder-style folders.
    eval_train: str | None = None
    eval_val: str | None = None
    # Mid-epoch checkpoints (with the sampler position): every N iterations / M minutes; 0: off.
    checkpoint_every: int = 0
    checkpoint_every_minutes: float = 0.0
    # Exit status after SIGTERM / SIGUSR1 stopped the run with a checkpoint (e.g. a code to requeue on).
    preempt_exit_code: int = 0
    strategy: Literal["ddp", "fsdp"] = "ddp"  # fsdp: FSDP2 (fully_shard) with sharded checkpoints
    # Collapse guard (dinofeat.training.engine.collapse): windows of N iterations (0: one epoch), and how many
    # collapsed windows in a row trigger its one warning.
    collapse_window: int = 0
    collapse_patience: int = 3


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    crops: CropsConfig = field(default_factory=CropsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    run: RunConfig = field(default_factory=RunConfig)
    bands: BandsConfig = field(default_factory=BandsConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # a bare string, e.g. optim.optimizer=sgd


def _set(cfg: TrainConfig, dotted: str, value: Any) -> None:
    section_name, _, key = dotted.partition(".")
    section = getattr(cfg, section_name, None)
    if not key or section is None or not dataclasses.is_dataclass(section):
        sections = [f.name for f in dataclasses.fields(cfg)]
        raise KeyError(f"config key {dotted!r} must be <section>.<field> with section in {sections}")
    names = {f.name: f for f in dataclasses.fields(section)}
    if key not in names:
        raise KeyError(f"unknown config key {dotted!r}; {section_name} has {sorted(names)}")
    current = getattr(section, key)
    pair = key.endswith("_scale") or key == "blur_sigma"
    if isinstance(current, tuple) or (pair and isinstance(value, list)):
        value = tuple(float(v) for v in value)
    elif isinstance(current, bool) and not isinstance(value, bool):
        raise TypeError(f"config key {dotted!r} expects true/false, got {value!r}")
    elif isinstance(current, (int, float)) and not isinstance(current, bool):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"config key {dotted!r} expects a number, got {value!r}")
        if isinstance(current, int) and value != int(value):
            raise TypeError(f"config key {dotted!r} expects a whole number, got {value!r}")
        value = type(current)(value)
    setattr(section, key, value)


def apply_overrides(cfg: TrainConfig, values: dict[str, Any]) -> TrainConfig:
    """Set dotted keys (``{"optim.lr": 1e-3}``) on ``cfg`` in place and return it."""
    for dotted, value in values.items():
        _set(cfg, dotted, value)
    return cfg


def _flatten(data: dict[str, Any], where: str) -> dict[str, Any]:
    flat = {}
    for section, values in data.items():
        if not isinstance(values, dict):
            raise ValueError(f"{where}: top-level key {section!r} must map to a section object")
        for key, value in values.items():
            flat[f"{section}.{key}"] = value
    return flat


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (``.yaml``/``.yml``) or JSON config file as dotted keys."""
    file = Path(path)
    text = file.read_text()
    if file.suffix in {".yaml", ".yml"}:
        yaml = require("yaml", "yaml", "YAML configs")
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as error:
            raise ValueError(f"{file} is not valid YAML: {error}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{file} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{file} must hold a mapping of sections")
    return _flatten(data, str(file))


def resolve_config(
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: list[str] | None = None,
) -> TrainConfig:
    """Defaults, then a preset, then a config file, then ``key=value`` overrides (values parsed as JSON).

    Raises:
        KeyError: for an unknown preset or config key.
        TypeError: for a value of the wrong type.
        ValueError: for values out of range (all of them named, see
            :func:`~dinofeat.training.config.checks.config_problems`).
    """
    cfg = TrainConfig()
    if preset is not None:
        if preset not in PRESETS:
            raise KeyError(f"unknown preset {preset!r}; available: {sorted(PRESETS)}")
        apply_overrides(cfg, PRESETS[preset])
    if config_file is not None:
        apply_overrides(cfg, load_config_file(config_file))
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} must look like section.key=value")
        _set(cfg, key.strip(), _parse_value(value.strip()))
    return check_config(cfg)


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Rebuild a :class:`TrainConfig` from ``to_dict()`` output (e.g. the JSON beside a checkpoint)."""
    return check_config(apply_overrides(TrainConfig(), _flatten(data, "config")))


_OFFICIAL_VITS = {"vit_tiny": (192, 3), "vit_small": (384, 6), "vit_base": (768, 12)}


def build_arch(model: ModelConfig) -> ArchConfig:
    """Resolve ``model.arch`` to a ViTConfig / ResNetConfig (without drop-path).

    Example:
        >>> build_arch(ModelConfig(arch="vit_tiny", patch_size=8)).embed_dim
        192
    """
    arch = model.arch
    if isinstance(arch, dict):
        return arch_from_dict(dict(arch))
    if arch in _OFFICIAL_VITS:
        dim, heads = _OFFICIAL_VITS[arch]
        return ViTConfig(patch_size=model.patch_size, embed_dim=dim, depth=12, num_heads=heads)
    if arch == "resnet50":
        return ResNetConfig()
    if arch in ZOO:
        return get_spec(arch).arch
    raise KeyError(
        f"unknown model.arch {arch!r}; use vit_tiny/vit_small/vit_base, resnet50, a zoo name "
        f"({', '.join(sorted(ZOO))}) or a ViTConfig dict"
    )


def training_arch(cfg: TrainConfig) -> ArchConfig:
    """The backbone the trainer builds: ``model.arch`` with ``in_chans = data.channels`` for bands and
    ``model.num_register_tokens``."""
    arch = build_arch(cfg.model)
    registers = cfg.model.num_register_tokens
    if registers is not None and registers != getattr(arch, "num_register_tokens", 0):
        if not isinstance(arch, ViTConfig):
            raise ValueError(f"model.num_register_tokens={registers}: only ViTs have register tokens")
        # From scratch, the official DINOv2 layout: positions for CLS and the patches, none for registers.
        arch = dataclasses.replace(arch, num_register_tokens=registers, pos_embed_has_cls=True)
    if cfg.data.channels is None:
        return arch
    try:
        trained: ArchConfig = with_training_fields(arch, family_of(arch), in_chans=cfg.data.channels)
    except ValueError as error:
        raise ValueError(f"data.channels={cfg.data.channels}: {error}") from None
    return trained


def band_normalization(cfg: TrainConfig) -> BandNormalization | None:
    """The per-band preprocessing of a band run (None for RGB)."""
    if cfg.data.channels is None:
        return None
    b = cfg.bands

    def values(items: list[float] | None) -> tuple[float, ...] | None:
        return None if items is None else tuple(float(v) for v in items)

    return BandNormalization(cfg.data.channels, values(b.mean), values(b.std), values(b.clip_low),
                             values(b.clip_high), b.stretch, b.arcsinh_scale)


def eval_preprocess(cfg: TrainConfig) -> PreprocessConfig:
    """Evaluation preprocessing matching the training resolution: the official resize-to-crop
    ratio 256/224 around a centre crop of the global crop size (and a band run's normalisation)."""
    size = cfg.crops.global_size
    return PreprocessConfig(resize=round(size * 256 / 224), crop=size, bands=band_normalization(cfg))
