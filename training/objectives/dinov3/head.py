"""The DINOv3 projection head (DINO and iBOT heads alike): MLP, L2-normalised bottleneck, plain last layer.

Facts from the official DINOv3 code: the MLP is Linear (-> BatchNorm if asked) -> GELU, repeated, then
Linear to the bottleneck (a single Linear for one layer), state-dict keys ``mlp.<i>`` (``mlp.weight`` for
one layer); the bottleneck is L2-normalised with eps 1e-12 (1e-6 in float16); the last layer is a
bias-free Linear with **no weight normalisation** (DINO / DINOv2 normalise it), so its state dict is
``last_layer.weight``. Every Linear starts trunc-normal with std 0.02 and zero bias.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dinofeat.training.objectives.dino.head import _init_linear  # the same initialisation as DINO's head


def head_mlp(in_dim: int, hidden_dim: int, bottleneck_dim: int, nlayers: int, *, use_bn: bool = False,
             bias: bool = True) -> nn.Module:
    """The official head MLP: ``nlayers`` Linear layers with GELU (and BatchNorm) between them."""
    if nlayers < 1:
        raise ValueError(f"head nlayers must be >= 1, got {nlayers}")
    if nlayers == 1:
        return nn.Linear(in_dim, bottleneck_dim, bias=bias)
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(nlayers - 1):
        layers.append(nn.Linear(width, hidden_dim, bias=bias))
        if use_bn:
            layers.append(nn.BatchNorm1d(hidden_dim))
        layers.append(nn.GELU())
        width = hidden_dim
    layers.append(nn.Linear(hidden_dim, bottleneck_dim, bias=bias))
    return nn.Sequential(*layers)


class DINOv3Head(nn.Module):
    """MLP -> L2 normalisation -> bias-free linear layer to the prototypes.

    Args:
        in_dim: Backbone feature width.
        out_dim: Prototypes K.
        hidden_dim: MLP hidden width.
        bottleneck_dim: Bottleneck width.
        nlayers: MLP layers (>= 1).
        use_bn: BatchNorm after each hidden Linear.
        mlp_bias: Biases in the MLP.

    Example:
        >>> head = DINOv3Head(32, 64, hidden_dim=16, bottleneck_dim=8)
        >>> head(torch.randn(3, 32)).shape, sorted(head.state_dict())[0]
        (torch.Size([3, 64]), 'last_layer.weight')
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 nlayers: int = 3, *, use_bn: bool = False, mlp_bias: bool = True) -> None:
        super().__init__()
        self.mlp = head_mlp(in_dim, hidden_dim, bottleneck_dim, nlayers, use_bn=use_bn, bias=mlp_bias)
        self.last_layer = nn.Linear(bottleneck_dim, out_dim, bias=False)
        self.apply(_init_linear)

    def forward(self, x: torch.Tensor, *, no_last_layer: bool = False) -> torch.Tensor:
        """Prototype logits (N, K), or the normalised bottleneck (N, bottleneck) with ``no_last_layer``."""
        x = self.mlp(x)
        x = F.normalize(x, dim=-1, p=2, eps=1e-6 if x.dtype == torch.float16 else 1e-12)
        if no_last_layer:
            return x
        out: torch.Tensor = self.last_layer(x)
        return out

