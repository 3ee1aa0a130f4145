"""Continued pretraining from released weights (``model.init``) and DINOv2's fine-tuning lr settings.

``model.init`` names a zoo backbone, an exported dinofeat folder or an official ``.pth`` (state dict
or full training checkpoint). Its backbone starts both student and teacher; the DINO heads start
fresh, except from an official full checkpoint, whose student and teacher heads are loaded too.
A patch embedding with another number of input channels (RGB weights, C-band data) is adapted:
``"repeat"`` cycles the RGB filters over the bands, ``"average"`` gives every band the mean RGB
filter; both scale by 3 / C so that a flat image gives the pre-adaptation response.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dinofeat.hub.checkpoints import backbone_from_checkpoint
from dinofeat.hub.format import CONFIG_FILE, HubConfig, load_state_dict_strict, read_config
from dinofeat.hub.loading import load
from dinofeat.hub.weight_files import read_weights
from dinofeat.models import ArchConfig, family_of
from dinofeat.models.family import with_training_fields
from dinofeat.registry import ZOO
from dinofeat.training.config.train_config import TrainConfig, build_arch
from dinofeat.training.objectives.dino.head import official_head_keys_to_parametrized

_log = logging.getLogger("dinofeat.training")


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
    if arch is not None:
        _check_registers(cfg, int(getattr(arch, "num_register_tokens", 0)))
        # The training-time fields come from the run (data.channels, model.drop_path_rate).
        cfg.model.arch = {k: v for k, v in arch.to_dict().items() if k not in ("in_chans", "drop_path_rate")}
    return cfg


def _check_registers(cfg: TrainConfig, have: int) -> None:
    wanted = cfg.model.num_register_tokens
    if wanted is not None and wanted != have:
        raise ValueError(
            f"model.num_register_tokens={wanted}, but model.init {cfg.model.init} has "
            f"{have or 'no'} register tokens: registers cannot be added to or removed from trained weights. "
            "Leave model.num_register_tokens unset (the initial weights decide), or start from a model "
            "trained with them (e.g. a *_reg4 model)")


def _init_state(cfg: TrainConfig) -> tuple[dict[str, torch.Tensor], Any]:
    """(backbone state dict of model.init, the raw file object when it is a file, else None)."""
    source = str(cfg.model.init)
    if source in ZOO or Path(source).is_dir():
        return load(source, device="cpu").backbone.state_dict(), None
    raw = read_weights(source)
    arch = build_arch(cfg.model)
    family = family_of(arch)
    state = backbone_from_checkpoint(raw)
    if "pos_embed" in state:  # a ViT's weights: do they have registers?
        _check_registers(cfg, int(state["register_tokens"].shape[1]) if "register_tokens" in state else 0)
    if family.input_weight in state:
        # The file's own channel count, so that its input convolution converts before adaptation.
        arch = with_training_fields(arch, family, in_chans=int(state[family.input_weight].shape[1]))
    return family.to_backbone_keys(state, arch), raw


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
    key = family_of(build_arch(cfg.model)).input_weight
    have = int(state[key].shape[1]) if key is not None and key in state else None
    channels = int(target[key].shape[1]) if key is not None and key in target else None
    if key is not None and have is not None and channels is not None and have != channels:
        rule = cfg.model.patch_embed_adapt
        info["patch_embed_adapted"] = f"{rule}: {have} -> {channels} channels"
        state = {**state, key: adapt_patch_embed(state[key], channels, rule)}
    if "mask_token" in target and "mask_token" not in state:
        # DINOv2's iBOT mask token: the released one where the file has it (official .pth), else zeros.
        released = backbone_from_checkpoint(raw).get("mask_token") if isinstance(raw, dict) else None
        state = {**state, "mask_token": target["mask_token"] if released is None else released.reshape(1, -1)}
    for name, wrapper in (("student", student), ("teacher", teacher)):
        load_state_dict_strict(wrapper.backbone, state, origin=f"model.init {cfg.model.init} ({name})")  # type: ignore[arg-type]
    # An official DINO checkpoint's heads; DINOv2's heads always start fresh (its networks have no `head`).
    if hasattr(student, "head") and isinstance(raw, dict) and all(
            isinstance(raw.get(name), dict) for name in ("student", "teacher")):
        for name, wrapper in (("student", student), ("teacher", teacher)):
            heads = {k.removeprefix("module.").removeprefix("head."): v for k, v in raw[name].items()
                     if k.removeprefix("module.").startswith("head.")}
            load_state_dict_strict(wrapper.head, official_head_keys_to_parametrized(heads),  # type: ignore[arg-type]
                                   origin=f"model.init {cfg.model.init} ({name} head)")
        info["heads_loaded"] = True
    _log.info("model.init: %s", info)
    return info


def layer_decay_param_groups(model: nn.Module, depth: int, layer_decay: float, patch_embed_lr_mult: float,
                             layer_of: Callable[[str, int], int]) -> list[dict[str, Any]]:
    """Parameter groups with an ``lr_mult`` each: ``layer_decay ** (depth + 1 - layer)`` (``layer_of``: the
    backbone family's numbering, see :class:`~dinofeat.models.family.ModelFamily`), times
    ``patch_embed_lr_mult`` for the patch embedding; biases and 1-D tensors get no weight decay
    (``apply_wd`` False), as in :func:`dinofeat.training.objectives.optim.param_groups`.

    Example:
        >>> groups = layer_decay_param_groups(nn.Linear(2, 2), 1, layer_decay=0.5, patch_embed_lr_mult=1,
        ...                                   layer_of=lambda name, depth: 0)
        >>> [(g["names"], g["lr_mult"]) for g in groups]
        [(['weight'], 1.0), (['bias'], 1.0)]
    """
    groups: dict[tuple[float, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        inside = name.removeprefix("backbone.")
        layer = layer_of(inside, depth) if inside != name else depth + 1  # the head follows the blocks
        mult = layer_decay ** (depth + 1 - layer)
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
