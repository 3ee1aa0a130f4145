"""DINOv2's parameter groups: layer-wise lr decay, the patch-embedding lr multiplier, the official
weight-decay exemptions and the last-layer flag (``dinov2/utils/param_groups.py``).

Per student sub-module (backbone, DINO head, iBOT head): a backbone parameter of layer l (0 for the
position / patch embeddings and the CLS, register and mask tokens, i + 1 for block i, L + 1 for the rest)
gets ``lr_mult = decay ** (L + 1 - l)``; the heads get 1. Patch-embedding parameters are further multiplied
by ``patch_embed_lr_mult``. ``wd_mult`` is 0 for names ending in ``.bias`` or containing ``norm`` or
``gamma`` (LayerNorms, layer scale) and 1 otherwise, so the CLS, register, mask tokens, the position
table and the heads' weight-norm gain are decayed. ``last_layer`` parameters follow the last-layer lr.
Parameters with the same three values (and part: backbone or head, for freezing the backbone) share one
optimiser group.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn


def parameter_settings(name: str, layer: int, depth: int, layer_decay: float,
                       patch_embed_lr_mult: float) -> tuple[float, float, bool]:
    """(lr multiplier, weight-decay multiplier, is last layer) of one parameter of layer ``layer``.

    Example:
        >>> parameter_settings("patch_embed.proj.weight", 0, 2, 0.9, 0.2)
        (0.1458, 1.0, False)
    """
    lr_mult = layer_decay ** (depth + 1 - layer)
    if "patch_embed" in name:
        lr_mult = lr_mult * patch_embed_lr_mult
    wd_mult = 0.0 if name.endswith(".bias") or "norm" in name or "gamma" in name else 1.0
    return lr_mult, wd_mult, "last_layer" in name


def dinov2_param_groups(modules: dict[str, nn.Module], depth: int, layer_decay: float,
                        patch_embed_lr_mult: float, layer_of: Callable[[str, int], int]
                        ) -> list[dict[str, Any]]:
    """Fused optimiser groups over the named sub-modules (``{"backbone": ..., "dino_head": ...}``).

    Args:
        modules: Sub-modules by name; only ``"backbone"`` gets the layer-wise numbering.
        depth: Blocks of the backbone (L).
        layer_decay: Layer-wise lr decay (1.0: none).
        patch_embed_lr_mult: Extra multiplier of the patch embedding.
        layer_of: The backbone family's numbering (``ModelFamily.layer_of_parameter``).

    Returns:
        Groups with ``params``, ``names`` (prefixed with the module name), ``lr_mult``, ``wd_mult``,
        ``is_last_layer`` and ``is_backbone``; parameters without ``requires_grad`` are left out.
    """
    groups: dict[tuple[float, float, bool, bool], dict[str, Any]] = {}
    for prefix, module in modules.items():
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            layer = layer_of(name, depth) if prefix == "backbone" else depth + 1
            settings = parameter_settings(name, layer, depth, layer_decay, patch_embed_lr_mult)
            group = groups.setdefault((*settings, prefix == "backbone"), {
                "params": [], "names": [], "lr_mult": settings[0], "wd_mult": settings[1],
                "is_last_layer": settings[2], "is_backbone": prefix == "backbone"})
            group["params"].append(param)
            group["names"].append(f"{prefix}.{name}")
    return list(groups.values())


def apply_schedule(param_groups: list[dict[str, Any]], lr: float, wd: float, last_layer_lr: float) -> None:
    """The official ``apply_optim_scheduler``: each group's lr and weight decay for this iteration."""
    for group in param_groups:
        group["weight_decay"] = wd * group["wd_mult"]
        group["lr"] = (last_layer_lr if group["is_last_layer"] else lr) * group["lr_mult"]
