"""DINOv3's distilled ConvNeXts, in the official state-dict layout, answering the token interface.

Written from the published architecture (ConvNeXt, arXiv:2201.03545, as DINOv3 uses it), not from
timm's ``ConvNeXt``: an official ``.pth`` must load strictly under its own key names, and timm's
``LayerNorm2d`` normalises channels-first maps with ``F.layer_norm`` on a permuted tensor, whereas the
official stem / downsampling norm computes mean and (biased) variance by hand. Measured on the
``v3_convnext`` golden (fp32, CPU), patch tokens: 1.5e-6 max abs difference with the hand-written form
used here, 2.0e-6 with ``F.layer_norm``; on a random ConvNeXt-T timm's model differs by 8.1e-6
(dinov3-facts), and the gap grows with depth.

Key layout (what an official file holds): ``downsample_layers.0.{0: conv 4/4, 1: norm}``,
``downsample_layers.{1,2,3}.{0: norm, 1: conv 2/2}``, ``stages.S.M.{dwconv, norm, pwconv1, pwconv2,
gamma}``, ``norm`` (the final LayerNorm) and ``norms.3`` (the same module under its second name).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers.drop import DropPath
from torch import nn

from dinofeat.models.dinov3_convnext.config import DinoV3ConvNeXtConfig
from dinofeat.models.tokens import TokenOutput, check_images, selected_blocks

#: Total stride of the last stage: one patch token per 32x32 pixels.
STRIDE = 32


class ChannelsFirstLayerNorm(nn.Module):
    """LayerNorm over the channels of a (B, C, H, W) map, mean and biased variance computed by hand."""

    def __init__(self, channels: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        out: torch.Tensor = self.weight[:, None, None] * x + self.bias[:, None, None]
        return out


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7 conv, LayerNorm, 4x MLP with exact GELU, layer scale, residual."""

    def __init__(self, dim: int, layer_scale: float, eps: float, drop_path: float) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)  # channels last for the norm and the MLP
        y = self.pwconv2(F.gelu(self.pwconv1(self.norm(y))))
        out: torch.Tensor = x + self.drop_path((self.gamma * y).permute(0, 3, 1, 2))
        return out


def _stage_tokens(fmap: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """(B, C, h, w) -> (B, 1 + h*w, C): the spatial mean, then the map row by row, through ``norm``."""
    patches = fmap.flatten(2).transpose(1, 2)
    return norm(torch.cat([fmap.mean(dim=(2, 3)).unsqueeze(1), patches], dim=1))  # type: ignore[no-any-return]


class DinoV3ConvNeXt(nn.Module):
    """A DINOv3 ConvNeXt backbone. ``forward(x)`` is the official ``x_norm_clstoken``.

    In the token interface the one prefix token is the normed spatial mean of the last stage and the
    patch tokens are its normed stride-32 map. ``blocks=`` picks stages (0-3): each intermediate is
    that stage's (B, 1 + h_s*w_s, C_s) tokens, the pooled vector first, as the official
    ``get_intermediate_layers`` gives them: only the last stage goes through the final norm, the
    others are raw, at their own width and stride. A ConvNeXt has no attention.

    Example:
        >>> cfg = DinoV3ConvNeXtConfig(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32))
        >>> DinoV3ConvNeXt(cfg)(torch.randn(1, 3, 64, 96)).shape
        torch.Size([1, 32])
    """

    has_attention = False

    def __init__(self, config: DinoV3ConvNeXtConfig) -> None:
        super().__init__()
        self.config = config
        dims, eps = config.dims, config.layer_norm_eps
        self.downsample_layers = nn.ModuleList([
            nn.Sequential(nn.Conv2d(config.in_chans, dims[0], kernel_size=4, stride=4),
                          ChannelsFirstLayerNorm(dims[0], eps)),
            *(nn.Sequential(ChannelsFirstLayerNorm(dims[i - 1], eps),
                            nn.Conv2d(dims[i - 1], dims[i], kernel_size=2, stride=2)) for i in range(1, 4)),
        ])
        total = sum(config.depths)  # drop-path rate rising linearly over all blocks (plain floats: meta-safe)
        rates = [config.drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        starts = [sum(config.depths[:i]) for i in range(4)]
        self.stages = nn.ModuleList(
            nn.Sequential(*(ConvNeXtBlock(dims[i], config.layer_scale_init_value, eps, rates[starts[i] + j])
                            for j in range(config.depths[i])))
            for i in range(4)
        )
        self.norm = nn.LayerNorm(dims[-1], eps=eps)
        # The official per-stage norms of get_intermediate_layers: only the last stage is normed, by
        # ``norm`` itself, which is why files hold ``norms.3.*`` beside ``norm.*``.
        self.norms = nn.ModuleList([nn.Identity(), nn.Identity(), nn.Identity(), self.norm])
        self.apply(_init_weights)

    @property
    def depth(self) -> int:
        """Four stages, which ``blocks=`` indexes."""
        return len(self.stages)

    @property
    def patch_size(self) -> None:
        return None

    def _stage_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four stages' output maps (B, C_s, H/4/2^s, W/4/2^s) of a checked image batch."""
        check_images(x, self.config.in_chans)
        if min(x.shape[2], x.shape[3]) < STRIDE:
            raise ValueError(f"a ConvNeXt needs images of at least {STRIDE}x{STRIDE} pixels (one stride-32 "
                             f"token), got {x.shape[2]}x{x.shape[3]}")
        maps = []
        for down, stage in zip(self.downsample_layers, self.stages, strict=True):
            x = stage(down(x))
            maps.append(x)
        return maps

    def forward_tokens(self, x: torch.Tensor, *, cls_attention: bool = False,
                       blocks: Sequence[int] = (), patch_stride: int | None = None) -> TokenOutput:
        """Normed pooled vector, then the normed stride-32 tokens, plus the stages in ``blocks``."""
        if patch_stride is not None:
            raise NotImplementedError("a ConvNeXt has no patches to overlap (patch_stride is for ViTs)")
        if cls_attention:
            raise TypeError("a ConvNeXt has no attention (use embed, patch_tokens or intermediate_layers)")
        wanted = selected_blocks(blocks, self.depth)
        maps = self._stage_maps(x)
        intermediates = [_stage_tokens(maps[i], self.norms[i]) for i in wanted]
        grids = [(fmap.shape[2], fmap.shape[3]) for fmap in maps]
        return TokenOutput(_stage_tokens(maps[-1], self.norm), grids[-1], num_prefix=1,
                           intermediates=intermediates, intermediate_grids=[grids[i] for i in wanted])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self._stage_maps(x)[-1].mean(dim=(2, 3)))  # type: ignore[no-any-return]


def _init_weights(module: nn.Module) -> None:
    # The ConvNeXt initialisation: truncated normal (std 0.02) weights, zero biases.
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
