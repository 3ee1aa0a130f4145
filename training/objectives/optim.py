"""Optimiser plumbing of DINO: parameter groups, per-tensor gradient clipping, last-layer
freezing, and the AdamW / SGD / LARS optimisers."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import torch
from torch import nn

OptimizerName = Literal["adamw", "sgd", "lars"]


def param_groups(model: nn.Module) -> list[dict[str, Any]]:
    """The official two groups: regularised parameters, then biases and 1-D tensors (no weight decay).

    Parameters with ``requires_grad=False`` (the frozen weight-norm gain) are left out. Group 0
    includes ``cls_token``, ``pos_embed`` and a trainable gain ``g`` of shape (K, 1).

    Returns:
        ``[{"params": [...], "names": [...]}, {"params": [...], "names": [...], "weight_decay": 0.0}]``.

    Example:
        >>> groups = param_groups(nn.Linear(3, 2))
        >>> [g["names"] for g in groups]
        [['weight'], ['bias']]
    """
    regularized: list[nn.Parameter] = []
    not_regularized: list[nn.Parameter] = []
    reg_names: list[str] = []
    not_reg_names: list[str] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.endswith(".bias") or param.ndim == 1:
            not_regularized.append(param)
            not_reg_names.append(name)
        else:
            regularized.append(param)
            reg_names.append(name)
    return [
        {"params": regularized, "names": reg_names},
        {"params": not_regularized, "names": not_reg_names, "weight_decay": 0.0},
    ]


@torch.no_grad()
def clip_gradients_per_param(model: nn.Module, clip: float) -> list[torch.Tensor]:
    """Clip each parameter's gradient separately to norm ``clip`` (official DINO semantics).

    For every tensor with a gradient: n = ||grad||_2, c = clip / (n + 1e-6); if c < 1 the
    gradient is multiplied by c. This is not global-norm clipping. The comparison is done
    on the device (multiplying by min(c, 1) leaves unclipped gradients bit-identical), so
    there is no host synchronisation per tensor.

    Returns:
        The gradient norms before clipping (0-d tensors), in parameter order, for tensors
        that have a gradient.

    Example:
        >>> layer = nn.Linear(2, 1)
        >>> layer(torch.ones(1, 2)).sum().mul(100).backward()
        >>> norms = clip_gradients_per_param(layer, 3.0)
        >>> round(float(layer.weight.grad.norm()), 4)
        3.0
    """
    grads = [param.grad for param in model.parameters() if param.grad is not None]
    if not grads:
        return []
    # One multi-tensor kernel per operation instead of five small kernels per tensor; the same
    # arithmetic: clip / (n + 1e-6) is reciprocal(n + 1e-6) * clip, as torch evaluates `clip / t`.
    norms = list(torch._foreach_norm(grads, 2))
    coefs = torch._foreach_add(norms, 1e-6)
    torch._foreach_reciprocal_(coefs)
    torch._foreach_mul_(coefs, clip)
    torch._foreach_clamp_max_(coefs, 1.0)
    torch._foreach_mul_(grads, coefs)
    return norms


def cancel_last_layer_gradients(model: nn.Module, epoch: int, freeze_last_layer: int) -> None:
    """Set the gradients of every ``last_layer`` parameter to None during the first epochs.

    With the gradient None the optimiser skips the tensor entirely (no weight decay, no moments).
    """
    if epoch >= freeze_last_layer:
        return
    for name, param in model.named_parameters():
        if "last_layer" in name:
            param.grad = None


class LARS(torch.optim.Optimizer):
    """LARS (layer-wise adaptive rate scaling) as used by DINO for large-batch ResNet runs.

    1-D parameters (biases, norms) get neither weight decay nor the trust-ratio scaling.

    Example:
        >>> opt = LARS(nn.Linear(2, 2).parameters(), lr=0.1)
    """

    def __init__(self, params: Iterable[Any], lr: float = 0.0, weight_decay: float = 0.0,
                 momentum: float = 0.9, eta: float = 0.001) -> None:
        defaults = {"lr": lr, "weight_decay": weight_decay, "momentum": momentum, "eta": eta}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                update = param.grad
                if param.ndim != 1:
                    update = update.add(param, alpha=group["weight_decay"])
                    param_norm = torch.norm(param)
                    update_norm = torch.norm(update)
                    one = torch.ones_like(param_norm)
                    trust = torch.where(
                        param_norm > 0.0,
                        torch.where(update_norm > 0, group["eta"] * param_norm / update_norm, one),
                        one,
                    )
                    update = update.mul(trust)
                state = self.state[param]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(param)
                mu = state["mu"]
                mu.mul_(group["momentum"]).add_(update)
                param.add_(mu, alpha=-group["lr"])


def build_optimizer(name: OptimizerName, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """AdamW (default), SGD (momentum 0.9) or LARS over the given parameter groups.

    lr and weight decay start at 0 and are set every iteration from the schedules, as in
    the official loop.
    """
    clean = [{k: v for k, v in g.items() if k != "names"} for g in groups]
    if name == "adamw":
        # The fused kernel (one pass over each tensor's parameter, gradient and both moments) where
        # torch has one for the parameters' device; the same update to float32 rounding.
        params = [p for g in clean for p in g["params"]]
        devices = {p.device.type for p in params}
        plain = all(type(p) is nn.Parameter or type(p) is torch.Tensor for p in params)
        fused = plain and len(devices) == 1 and devices <= {"cpu", "cuda"}
        return torch.optim.AdamW(clean, fused=fused or None)
    if name == "sgd":
        return torch.optim.SGD(clean, lr=0, momentum=0.9)
    if name == "lars":
        return LARS(clean)
    raise ValueError(f"unknown optimizer {name!r}; expected 'adamw', 'sgd' or 'lars'")
