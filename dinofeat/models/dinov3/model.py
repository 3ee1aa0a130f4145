"""DINOv3's RoPE Vision Transformer, in the official state-dict layout.

dinofeat's own implementation, written from the published architecture (the official code is
under the DINOv3 License and is not copied): a stride-P patch convolution, CLS and storage
tokens, pre-norm blocks with LayerScale whose attention rotates the patch queries and keys
(:mod:`dinofeat.models.dinov3.rope`), and final norm(s). The module's keys are the official ones
(``cls_token``, ``storage_tokens``, ``mask_token``, ``rope_embed.periods``,
``blocks.N.attn.qkv.bias_mask``, ``blocks.N.ls1.gamma``, ``mlp.fc1`` or ``mlp.w1/w2/w3``,
``norm``, ``cls_norm``, ``local_cls_norm``), so an official ``.pth`` loads strictly as it is.

Behaviours kept from the official eval-mode forward:

* image sides that are not multiples of the patch size are floor-cropped (the convolution
  has no padding and drops the remainder pixels);
* the qkv bias is ``bias * bias_mask`` (the released masks zero the key third);
* with ``untie_cls_and_patch_norms`` CLS and storage tokens go through ``cls_norm``, patches
  through ``norm``, in the final output and in every intermediate; ``local_cls_norm`` is a
  training-time norm, used only by :meth:`DinoV3VisionTransformer.forward_training` for local crops.

In train mode the model behaves as official training does, in every forward: RoPE coordinates
get the configured shift / jitter / rescale augmentation, drawn anew for every block (and, in
:meth:`~DinoV3VisionTransformer.forward_training`, for every crop group), and ``drop_path_rate`` > 0
runs each residual branch on a random subset of the samples (:func:`subset_residual`). Eval mode
is untouched by both. The training forward itself (masks, local crops, bf16 RoPE) is in
:mod:`dinofeat.models.dinov3.training`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from timm.layers.mlp import Mlp
from torch import nn

from dinofeat.models.dinov3.config import DINOV3_FFN_ALIGN, DINOV3_NORM_EPS, DinoV3Config
from dinofeat.models.dinov3.rope import RopeEmbedding, rotate_patches
from dinofeat.models.dinov3.training import OFFICIAL_TRAINING_ROPE_DTYPE, TrainingOutput, forward_training
from dinofeat.models.tokens import TokenOutput, check_images, check_patch_stride, selected_blocks

RopeTables = tuple[torch.Tensor, torch.Tensor]


def subset_residual(x: torch.Tensor, branch: Callable[[torch.Tensor], torch.Tensor], rate: float
                    ) -> torch.Tensor:
    """``x + branch(x)`` under the official DINOv3 stochastic depth: a random subset of
    ``max(int(B (1 - rate)), 1)`` samples (``torch.randperm`` on ``x``'s device, one call) goes
    through ``branch``, whose output is added back to those rows scaled by ``B / subset``; the other
    rows pass unchanged.

    Example:
        >>> x = torch.ones(4, 2, 3)
        >>> out = subset_residual(x, lambda y: y, 0.5)  # 2 of 4 rows get 1 + 1 * 4 / 2
        >>> sorted(out[:, 0, 0].tolist())
        [1.0, 1.0, 3.0, 3.0]
    """
    batch = x.shape[0]
    size = max(int(batch * (1 - rate)), 1)
    kept = torch.randperm(batch, device=x.device)[:size]
    return torch.index_add(x, 0, kept, branch(x[kept]).to(x.dtype), alpha=batch / size)


class MaskedBiasLinear(nn.Linear):
    """A linear layer whose bias is multiplied by a stored mask (``bias_mask``) before use."""

    bias_mask: torch.Tensor

    def __init__(self, in_features: int, out_features: int, *, bias: bool, mask_k_bias: bool) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.masked = bias and mask_k_bias
        if self.masked:
            third = out_features // 3
            mask = torch.ones(out_features)
            mask[third: 2 * third] = 0.0  # q, k, v rows: no key bias
            self.register_buffer("bias_mask", mask, persistent=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias * self.bias_mask.to(self.bias.dtype) if self.masked else self.bias
        return F.linear(x, self.weight, bias)


class SwiGLU(nn.Module):
    """``w3(silu(w1 x) * w2 x)``, official hidden width: 2/3 of ``hidden`` rounded up to ``align``."""

    def __init__(self, dim: int, hidden: int, align: int, bias: bool) -> None:
        super().__init__()
        width = int(hidden * 2 / 3)
        width += -width % align
        self.w1 = nn.Linear(dim, width, bias=bias)
        self.w2 = nn.Linear(dim, width, bias=bias)
        self.w3 = nn.Linear(width, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.w3(F.silu(self.w1(x)) * self.w2(x))
        return out


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class RopeAttention(nn.Module):
    """Multi-head self-attention with RoPE on the patch tokens; fused SDPA for the output."""

    def __init__(self, config: DinoV3Config) -> None:
        super().__init__()
        dim = config.embed_dim
        self.num_heads = config.num_heads
        self.qkv = MaskedBiasLinear(dim, 3 * dim, bias=config.qkv_bias, mask_k_bias=config.mask_k_bias)
        self.proj = nn.Linear(dim, dim, bias=config.proj_bias)

    def forward(self, x: torch.Tensor, rope: RopeTables, cls_attention: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Output (B, N, D) and, if asked, the CLS query's softmax row over all N keys (B, heads, N)."""
        batch, n_tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, n_tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
        sin, cos = rope
        q, k = rotate_patches(q, sin, cos), rotate_patches(k, sin, cos)
        row = None
        if cls_attention:  # computed on the side: SDPA below never materialises the matrix
            logits = (q[:, :, :1] @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
            row = logits.float().softmax(dim=-1)[:, :, 0].to(x.dtype)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, n_tokens, dim)), row


class RopeBlock(nn.Module):
    """Pre-norm block: ``x + ls1(attn(norm1 x))``, then ``x + ls2(mlp(norm2 x))``, on a list of crop
    groups (each with its own RoPE tables); stochastic depth in train mode (:func:`subset_residual`)."""

    def __init__(self, config: DinoV3Config) -> None:
        super().__init__()
        dim = config.embed_dim
        norm = partial(nn.LayerNorm, eps=DINOV3_NORM_EPS[config.norm_layer])
        self.norm1 = norm(dim)
        self.attn = RopeAttention(config)
        scale = config.layerscale_init
        self.ls1: nn.Module = LayerScale(dim, scale) if scale is not None else nn.Identity()
        self.norm2 = norm(dim)
        hidden = int(dim * config.ffn_ratio)
        align = DINOV3_FFN_ALIGN[config.ffn_layer]
        self.mlp: nn.Module = (Mlp(dim, hidden, act_layer=nn.GELU, bias=config.ffn_bias) if align is None
                               else SwiGLU(dim, hidden, align, config.ffn_bias))
        self.ls2: nn.Module = LayerScale(dim, scale) if scale is not None else nn.Identity()
        self.drop_path_rate = config.drop_path_rate

    def _attention_branch(self, x: torch.Tensor, rope: RopeTables) -> torch.Tensor:
        out: torch.Tensor = self.ls1(self.attn(self.norm1(x), rope)[0])
        return out

    def _mlp_branch(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.ls2(self.mlp(self.norm2(x)))
        return out

    def forward(self, xs: Sequence[torch.Tensor], ropes: Sequence[RopeTables], cls_attention: bool = False
                ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """The outputs of every group and, if asked (one group, no stochastic depth), the CLS query's
        softmax row over all keys (B, heads, N).

        With stochastic depth the draws come in the official order: the attention branch's subset
        for each group, then the MLP branch's for each group.
        """
        rate = self.drop_path_rate
        if self.training and rate > 0:
            if cls_attention:
                raise ValueError("cls_attention is an eval-mode output; this block is in train mode with "
                                 f"drop_path_rate {rate}")
            xs = [subset_residual(x, partial(self._attention_branch, rope=rope), rate)
                  for x, rope in zip(xs, ropes, strict=True)]
            return [subset_residual(x, self._mlp_branch, rate) for x in xs], None
        if cls_attention and len(xs) != 1:
            raise ValueError(f"cls_attention needs a single crop group, got {len(xs)}")
        outs, row = [], None
        for x, rope in zip(xs, ropes, strict=True):
            attended, row = self.attn(self.norm1(x), rope, cls_attention)
            x = x + self.ls1(attended)
            outs.append(x + self.ls2(self.mlp(self.norm2(x))))
        return outs, row


class PatchEmbed(nn.Module):
    """Stride-P convolution to (B, h, w, D); remainder pixels beyond a multiple of P are dropped."""

    def __init__(self, patch_size: int, in_chans: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.proj(x)
        return out.permute(0, 2, 3, 1)


class DinoV3VisionTransformer(nn.Module):
    """A DINOv3 ViT configured by a :class:`~dinofeat.models.dinov3.config.DinoV3Config`; ``forward(x)`` is
    the normed CLS.

    Example:
        >>> cfg = DinoV3Config(embed_dim=32, depth=2, num_heads=2, n_storage_tokens=4)
        >>> vit = DinoV3VisionTransformer(cfg)
        >>> vit.forward_tokens(torch.randn(1, 3, 48, 40)).tokens.shape  # 3 x 2 patches + CLS + 4 storage
        torch.Size([1, 11, 32])
    """

    has_attention = True

    def __init__(self, config: DinoV3Config) -> None:
        super().__init__()
        self.config = config
        dim = config.embed_dim
        self.patch_embed = PatchEmbed(config.patch_size, config.in_chans, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.storage_tokens = (nn.Parameter(torch.zeros(1, config.n_storage_tokens, dim))
                               if config.n_storage_tokens else None)
        self.mask_token = nn.Parameter(torch.zeros(1, dim))  # iBOT masking; a no-op term at inference
        self.rope_embed = RopeEmbedding(
            config.head_dim, base=config.pos_embed_rope_base, min_period=config.pos_embed_rope_min_period,
            max_period=config.pos_embed_rope_max_period, normalize=config.pos_embed_rope_normalize_coords,
            dtype=config.pos_embed_rope_dtype, shift=config.pos_embed_rope_shift_coords,
            jitter=config.pos_embed_rope_jitter_coords, rescale=config.pos_embed_rope_rescale_coords)
        self.blocks = nn.ModuleList(RopeBlock(config) for _ in range(config.depth))
        norm = partial(nn.LayerNorm, dim, eps=DINOV3_NORM_EPS[config.norm_layer])
        self.norm = norm()
        self.cls_norm = norm() if config.untie_cls_and_patch_norms else None
        self.local_cls_norm = norm() if config.untie_global_and_local_cls_norm else None  # training only
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.normal_(self.cls_token, std=0.02)
        if self.storage_tokens is not None:
            nn.init.normal_(self.storage_tokens, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @property
    def depth(self) -> int:
        return len(self.blocks)

    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    @property
    def num_prefix_tokens(self) -> int:
        return self.config.num_prefix_tokens

    def prepare_tokens(self, x: torch.Tensor, patch_stride: int | None = None
                       ) -> tuple[torch.Tensor, tuple[int, int], RopeTables]:
        """[CLS, storage..., patches row by row] (B, P + h*w, D), the input of block 0, its grid and
        the RoPE tables of its patch centres (see :meth:`forward_tokens` for ``patch_stride``)."""
        tokens, grid, rope = self.embed_tokens(x, patch_stride)
        return tokens, grid, rope()

    def embed_tokens(self, x: torch.Tensor, patch_stride: int | None = None,
                     masks: torch.Tensor | None = None, rope_dtype: torch.dtype | None = None
                     ) -> tuple[torch.Tensor, tuple[int, int], Callable[[], RopeTables]]:
        """Like :meth:`prepare_tokens`, with a function that makes the RoPE tables (a new draw of the
        coordinate augmentation at each call in train mode) computed in ``rope_dtype`` (None: the
        periods' dtype), and with ``masks`` (B, h*w) bool: those patches replaced by ``mask_token``
        (the official iBOT masking of the student's global crops)."""
        patch = self.config.patch_size
        check_images(x, self.config.in_chans, patch)
        height, width = x.shape[2], x.shape[3]
        if patch_stride is None or patch_stride == patch:
            patches = self.patch_embed(x)
            h, w = patches.shape[1], patches.shape[2]

            def rope() -> RopeTables:
                return self.rope_embed.for_grid(h, w, rope_dtype)
        else:
            check_patch_stride(patch_stride, patch, height, width)
            proj = self.patch_embed.proj
            patches = F.conv2d(x, proj.weight, proj.bias, stride=patch_stride).permute(0, 2, 3, 1)
            # Centres in patch units, j * s / P + 0.5, of an image H / P x W / P patches large: RoPE
            # evaluated where each overlapping patch lies (s = P gives the ordinary centres j + 0.5).
            step = patch_stride / patch
            device, dtype = patches.device, self.rope_embed.periods.dtype
            centres_y = torch.arange(patches.shape[1], device=device, dtype=dtype) * step + 0.5
            centres_x = torch.arange(patches.shape[2], device=device, dtype=dtype) * step + 0.5

            def rope() -> RopeTables:
                tables: RopeTables = self.rope_embed(centres_y, centres_x, (height / patch, width / patch),
                                                     rope_dtype)
                return tables
        batch, h, w, dim = patches.shape
        patches = patches.reshape(batch, h * w, dim)
        if masks is None:
            cls = self.cls_token + 0 * self.mask_token  # as the official forward without masks
        else:
            if masks.shape != (batch, h * w) or masks.dtype != torch.bool:
                raise ValueError("masks must be a bool tensor of shape (images, patches) = "
                                 f"{(batch, h * w)}, got {masks.dtype} {tuple(masks.shape)}")
            mask_token = self.mask_token.to(patches.dtype).unsqueeze(0)
            patches = torch.where(masks.unsqueeze(-1), mask_token, patches)
            cls = self.cls_token
        prefix = [cls.expand(batch, -1, -1)]
        if self.storage_tokens is not None:
            prefix.append(self.storage_tokens.expand(batch, -1, -1))
        return torch.cat([*prefix, patches], dim=1), (h, w), rope

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        """The eval-mode final norm(s): ``cls_norm`` for CLS + storage when untied, ``norm`` otherwise."""
        if self.cls_norm is None:
            normed: torch.Tensor = self.norm(x)
            return normed
        prefix = self.num_prefix_tokens
        return torch.cat([self.cls_norm(x[:, :prefix]), self.norm(x[:, prefix:])], dim=1)

    def forward_tokens(self, x: torch.Tensor, *, cls_attention: bool = False,
                       blocks: Sequence[int] = (), patch_stride: int | None = None) -> TokenOutput:
        """One forward pass returning tokens, optional CLS attention and intermediate blocks.

        Args:
            x: Normalised images (B, C, H, W), at least one patch on each side.
            cls_attention: Also return the last block's CLS-query attention over every key
                (CLS, storage tokens, patches).
            blocks: Indices of blocks (negative counts from the end) whose outputs, each through
                :meth:`final_norm`, go into ``intermediates`` (the official
                ``get_intermediate_layers(norm=True)``).
            patch_stride: Patch-embedding stride ``s`` (``1 <= s <= P``) for overlapping patches, a
                ((H - P) / s + 1) x ((W - P) / s + 1) grid with RoPE at the new patch centres; None or
                P: the ordinary forward.
        """
        depth = len(self.blocks)
        wanted = selected_blocks(blocks, depth)
        x, grid, make_rope = self.embed_tokens(x, patch_stride)
        rope = make_rope()
        attention = None
        intermediates = []
        for index, block in enumerate(self.blocks):
            if index and self.rope_embed.augments:  # train mode: a new draw for every block
                rope = make_rope()
            last_with_attention = cls_attention and index == depth - 1
            (x,), row = block([x], [rope], last_with_attention)
            if last_with_attention:
                attention = row
            if index in wanted:
                intermediates.append(self.final_norm(x))
        tokens = intermediates[-1] if wanted and wanted[-1] == depth - 1 else self.final_norm(x)
        return TokenOutput(tokens, grid, self.num_prefix_tokens, attention, intermediates,
                           [grid] * len(intermediates))

    def forward_training(self, global_crops: torch.Tensor, local_crops: torch.Tensor | None = None, *,
                         masks: torch.Tensor | None = None,
                         rope_dtype: torch.dtype | None = OFFICIAL_TRAINING_ROPE_DTYPE) -> TrainingOutput:
        """The official training forward (student, EMA teacher and Gram teacher alike): see
        :func:`dinofeat.models.dinov3.training.forward_training`."""
        return forward_training(self, global_crops, local_crops, masks=masks, rope_dtype=rope_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """CLS token after the final norm, (B, D)."""
        return self.forward_tokens(x).cls
