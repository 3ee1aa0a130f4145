"""The DINO projection head: MLP, L2-normalised bottleneck, weight-normalised last layer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

# Old ``torch.nn.utils.weight_norm`` names (official checkpoints) -> parametrization names.
_OFFICIAL_TO_PARAMETRIZED = {
    "last_layer.weight_g": "last_layer.parametrizations.weight.original0",
    "last_layer.weight_v": "last_layer.parametrizations.weight.original1",
}


class DINOHead(nn.Module):
    """3-layer MLP (GELU) -> bottleneck -> L2 normalisation -> weight-normalised linear layer.

    Args:
        in_dim: Backbone feature width.
        out_dim: Number of prototypes K (65536 in DINO).
        hidden_dim: MLP hidden width (2048).
        bottleneck_dim: Bottleneck width (256).
        nlayers: Number of MLP layers (>= 1).
        use_bn: BatchNorm after each hidden layer (the official ``use_bn_in_head``).
        norm_last_layer: Freeze the weight-norm gain g at 1 (requires_grad False).

    Example:
        >>> head = DINOHead(32, 64, hidden_dim=16, bottleneck_dim=8)
        >>> head(torch.randn(3, 32)).shape
        torch.Size([3, 64])
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
        use_bn: bool = False,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        if nlayers < 1:
            raise ValueError(f"DINOHead needs nlayers >= 1, got {nlayers}")
        # Official layout: a bare Linear for one layer, else a Sequential (keys `mlp.<i>`).
        self.mlp: nn.Module
        if nlayers == 1:
            self.mlp = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim)]
            for _ in range(nlayers - 2):
                if use_bn:
                    layers.append(nn.BatchNorm1d(hidden_dim))
                layers += [nn.GELU(), nn.Linear(hidden_dim, hidden_dim)]
            if use_bn:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers += [nn.GELU(), nn.Linear(hidden_dim, bottleneck_dim)]
            self.mlp = nn.Sequential(*layers)
        self.apply(_init_linear)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        gain = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            gain.fill_(1.0)
        if norm_last_layer:
            gain.requires_grad = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp(x)
        x = F.normalize(x, dim=-1, p=2)
        out: torch.Tensor = self.last_layer(x)
        return out


def _init_linear(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def official_head_keys_to_parametrized(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename ``weight_g`` / ``weight_v`` of an official DINO head to the parametrization names.

    Works on head state dicts and on any state dict whose keys end in the official names
    (``head.last_layer.weight_g``, ``module.head.last_layer.weight_v``, ...).

    Example:
        >>> sorted(official_head_keys_to_parametrized({"last_layer.weight_g": torch.ones(2, 1)}))
        ['last_layer.parametrizations.weight.original0']
    """
    renamed = {}
    for key, value in state_dict.items():
        for old, new in _OFFICIAL_TO_PARAMETRIZED.items():
            if key == old or key.endswith("." + old):
                key = key[: len(key) - len(old)] + new
                break
        renamed[key] = value
    return renamed
