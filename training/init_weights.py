"""Continued pretraining from released weights (``model.init``) and DINOv2's fine-tuning lr settings.

``model.init`` names a zoo backbone, an exported dinofeat folder or an official ``.pth`` (state dict
or full training checkpoint). Its backbone starts both student and teacher; the DINO heads start
fresh, except from an official full checkpoint, whose student and teacher heads are loaded too.
A patch embedding with another number of input channels (RGB weights, C-band data) is adapted:
``"repeat"`` cycles the RGB filters over the bands, ``"average"`` gives every band the mean RGB
filter; both scale by 3 / C so that a flat image gives the pre-adaptation response.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
from dinofeat.training.config import TrainConfig, build_arch
from dinofeat.training.head import official_head_keys_to_parametrized
from torch import nn

from dinofeat import convert
from dinofeat.config import ArchConfig, ViTConfig
from dinofeat.hub_format import CONFIG_FILE, HubConfig, load_state_dict_strict, read_config
from dinofeat.registry import ZOO

_log = logging.getLogger("dinofeat.training")
PATCH_WEIGHT = "patch_embed.proj.weight"


def adapt_patch_embed(weight: torch.Tensor, channels: int, rule: str = "repeat") -> torch.Tensor:
    """(D, c, p, p) patch-embedding filters -> (D, channels, p, p).

    Example:
        >>> w = torch.randn(4, 3, 2, 2)
        >>> torch.equal(adapt_patch_embed(w, 3), w)
        True
        >>> adapt_patch_embed(w, 5, "average").shape
        torch.Size([4, 5, 2, 2])
    """
    source = weight.shape[1]
    if channels == source:
        return weight
    if rule == "repeat":
        index = torch.arange(channels) % source
        adapted = weight[:, index]
    elif rule == "average":
        adapted = weight.mean(dim=1, keepdim=True).expand(-1, channels, -1, -1)
    else:
        raise ValueError(f"model.patch_embed_adapt must be 'repeat' or 'average', got {rule!r}")
    return (adapted * (source / channels)).contiguous()


def source_arch(source: str) -> ArchConfig | None:
    """The architecture a zoo name or a dinofeat folder declares (None for a bare weights file)."""
    if source in ZOO:
        return ZOO[source].arch
    folder = Path(source)
    if folder.is_dir():
        return HubConfig.from_dict(read_config(folder / CONFIG_FILE), origin=str(folder / CONFIG_FILE)).arch
    if not folder.is_file():
        raise FileNotFoundError(
            f"model.init {source!r} is neither a zoo name, a model folder nor a weights file")
    return None


def resolve_init_arch(cfg: TrainConfig) -> TrainConfig:
    """With ``model.init`` a zoo name or folder, set ``model.arch`` to its architecture (in place), so
    that the run's config (and its checkpoints and export) records the network it trains."""
    if cfg.model.init is None:
        return cfg
    arch = source_arch(cfg.model.init)
    if isinstance(arch, ViTConfig):
        cfg.model.arch = {k: v for k, v in arch.to_dict().items() if k not in ("in_chans", "drop_path_rate")}
    elif arch is not None:
        cfg.model.arch = "resnet50"
    return cfg


def _init_state(cfg: TrainConfig) -> tuple[dict[str, torch.Tensor], Any]:
    """(backbone state dict of model.init, the raw file object when it is a file, else None)."""
    import dinofeat
    from dinofeat.weight_files import read_weights

    source = str(cfg.model.init)
    if source in ZOO or Path(source).is_dir():
        return dinofeat.load(source, device="cpu").backbone.state_dict(), None
    raw = read_weights(source)
    arch = build_arch(cfg.model)
    state = convert.backbone_from_checkpoint(raw)
    if isinstance(arch, ViTConfig):
        # The file's own channel count, so that its patch embedding converts before adaptation.
        channels = int(state[PATCH_WEIGHT].shape[1]) if PATCH_WEIGHT in state else 3
        state = convert.dinov2_official_to_timm(state, dataclasses.replace(arch, in_chans=channels))
    else:
        state = convert.resnet_official_to_timm(state)
    return state, raw


def load_init_weights(cfg: TrainConfig, student: nn.Module, teacher: nn.Module) -> dict[str, Any]:
    """Load ``model.init`` into the backbones (and the heads of an official full checkpoint).

    Returns:
        What was done, for the log and the metrics file: source, patch-embedding adaptation, heads.

    Raises:
        WeightsMismatchError: the weights do not fit the configured network (naming the keys).
    """
    state, raw = _init_state(cfg)
    info: dict[str, Any] = {"init": cfg.model.init, "patch_embed_adapted": None, "heads_loaded": False}
    target = student.backbone.state_dict()  # type: ignore[union-attr]
    have = int(state[PATCH_WEIGHT].shape[1]) if PATCH_WEIGHT in state else None
    channels = int(target[PATCH_WEIGHT].shape[1]) if PATCH_WEIGHT in target else None
    if have is not None and channels is not None and have != channels:
        rule = cfg.model.patch_embed_adapt
        info["patch_embed_adapted"] = f"{rule}: {have} -> {channels} channels"
        state = {**state, PATCH_WEIGHT: adapt_patch_embed(state[PATCH_WEIGHT], channels, rule)}
    for name, wrapper in (("student", student), ("teacher", teacher)):
        load_state_dict_strict(wrapper.backbone, state, origin=f"model.init {cfg.model.init} ({name})")  # type: ignore[arg-type]
    if isinstance(raw, dict) and all(isinstance(raw.get(name), dict) for name in ("student", "teacher")):
        for name, wrapper in (("student", student), ("teacher", teacher)):
            heads = {k.removeprefix("module.").removeprefix("head."): v for k, v in raw[name].items()
                     if k.removeprefix("module.").startswith("head.")}
            load_state_dict_strict(wrapper.head, official_head_keys_to_parametrized(heads),  # type: ignore[arg-type]
                                   origin=f"model.init {cfg.model.init} ({name} head)")
        info["heads_loaded"] = True
    _log.info("model.init: %s", info)
    return info


def _layer_id(name: str, depth: int) -> int:
    """0 for the embeddings, i + 1 for block i, depth + 1 for the final norm and the head."""
    if name.startswith("backbone."):
        rest = name[len("backbone."):]
        if rest.startswith(("cls_token", "pos_embed", "reg_token", "patch_embed", "mask_token")):
            return 0
        if rest.startswith("blocks."):
            return int(rest.split(".")[1]) + 1
    return depth + 1


def layer_decay_param_groups(model: nn.Module, depth: int, layer_decay: float, patch_embed_lr_mult: float
                             ) -> list[dict[str, Any]]:
    """Parameter groups with an ``lr_mult`` each: ``layer_decay ** (depth + 1 - layer)``, times
    ``patch_embed_lr_mult`` for the patch embedding; biases and 1-D tensors get no weight decay
    (``apply_wd`` False), as in :func:`dinofeat.training.optim.param_groups`.

    Example:
        >>> groups = layer_decay_param_groups(nn.Linear(2, 2), 1, layer_decay=0.5, patch_embed_lr_mult=1)
        >>> [(g["names"], g["lr_mult"]) for g in groups]
        [(['weight'], 1.0), (['bias'], 1.0)]
    """
    groups: dict[tuple[float, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        mult = layer_decay ** (depth + 1 - _layer_id(name, depth))
        if ".patch_embed." in f".{name}":
            mult *= patch_embed_lr_mult
        decay = not (name.endswith(".bias") or param.ndim == 1)
        group = groups.setdefault((mult, decay),
                                  {"params": [], "names": [], "lr_mult": mult, "apply_wd": decay})
        if not decay:
            group["weight_decay"] = 0.0
        group["params"].append(param)
        group["names"].append(name)
    return list(groups.values())
