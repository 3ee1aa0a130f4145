"""One ViT forward over crops of several sizes, three ways, the same function.

The official DINOv2 student runs its global and local crops in one call, with xFormers' block-diagonal
attention over the concatenated tokens. Here, with PyTorch alone:

* ``"calls"``: one :meth:`DinoVisionTransformer.forward_tokens` per crop size;
* ``"nested"``: the tokens of every image packed into one (T, D) sequence for the per-token layers (norms,
  projections, MLP), and attention by ``scaled_dot_product_attention`` on a jagged nested tensor (each image
  attends to its own tokens only);
* ``"flex"``: the same packing, attention by FlexAttention with a block mask of the images (compiled by
  ``torch.compile`` unless ``compiled=False``).

Each gives what separate forwards give, up to float rounding (tests/models/test_list_forward.py);
``bench/bench_list_forward.py`` times them. The packed ways have no stochastic depth: they refuse a network
in training mode with drop-path (use ``"calls"``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from dinofeat.models.vit.model import DinoVisionTransformer

Method = Literal["calls", "nested", "flex"]
# (T, H, hd) q, k, v -> (T, H, hd)
Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def list_forward_tokens(vit: DinoVisionTransformer, images: Sequence[torch.Tensor],
                        masks: Sequence[torch.Tensor | None] | None = None, method: Method = "calls",
                        compiled: bool = True) -> list[torch.Tensor]:
    """The final-normed tokens (B_i, P + N_i, D) of each batch ``images[i]`` (B_i, C, H_i, W_i).

    Args:
        vit: The network.
        images: Batches of crops; the sizes may differ between batches.
        masks: Per batch, (B_i, N_i) bool iBOT masks or None.
        method: ``"calls"``, ``"nested"`` or ``"flex"`` (module docstring).
        compiled: FlexAttention through ``torch.compile`` (``"flex"`` only).

    Raises:
        ValueError: a packed method on a network in training mode with drop-path.
    """
    masks = list(masks) if masks is not None else [None] * len(images)
    if method == "calls":
        return [vit.forward_tokens(x, masks=m).tokens for x, m in zip(images, masks, strict=True)]
    if vit.training and any(getattr(b.drop_path1, "drop_prob", 0.0) for b in vit.blocks):
        raise ValueError(f"list forward {method!r} has no stochastic depth; use 'calls' in training")
    sequences = [vit.embed_tokens(x, masks=m)[0] for x, m in zip(images, masks, strict=True)]
    lengths = [s.shape[1] for s in sequences for _ in range(s.shape[0])]
    packed = torch.cat([s.reshape(-1, s.shape[-1]) for s in sequences])
    attend = _nested_attention(lengths, packed.device) if method == "nested" else _flex_attention(
        lengths, packed.device, compiled)
    for block in vit.blocks:
        packed = _packed_block(block, packed, attend)
    packed = vit.norm(packed)
    out, start = [], 0
    for s in sequences:
        size = s.shape[0] * s.shape[1]
        out.append(packed[start:start + size].reshape(s.shape))
        start += size
    return out


def _packed_block(block: nn.Module, x: torch.Tensor, attend: Attend) -> torch.Tensor:
    """timm's pre-norm block on packed (T, D) tokens, attention within each image."""
    b: Any = block
    attn: Any = b.attn
    h = b.norm1(x)
    heads, head_dim = attn.num_heads, attn.head_dim
    q, k, v = attn.qkv(h).reshape(len(x), 3, heads, head_dim).unbind(1)
    q, k = attn.q_norm(q), attn.k_norm(k)
    o = attend(q, k, v).reshape(len(x), heads * head_dim)
    x = x + b.ls1(attn.proj(attn.norm(o)))
    out: torch.Tensor = x + b.ls2(b.mlp(b.norm2(x)))
    return out


def _nested_attention(lengths: list[int], device: torch.device) -> Attend:
    offsets = torch.tensor([0, *lengths], device=device).cumsum(0)

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        def jagged(t: torch.Tensor) -> torch.Tensor:  # (T, H, hd) -> (images, H, j, hd), contiguous before
            nested: torch.Tensor = torch.nested.nested_tensor_from_jagged(t.contiguous(), offsets)
            return nested.transpose(1, 2)

        out = F.scaled_dot_product_attention(jagged(q), jagged(k), jagged(v))
        values: torch.Tensor = out.transpose(1, 2).values()
        return values

    return attend


@cache
def _compiled_flex() -> Callable[..., Any]:
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _flex_attention(lengths: list[int], device: torch.device, compiled: bool) -> Attend:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    image = torch.repeat_interleave(torch.arange(len(lengths), device=device),
                                    torch.tensor(lengths, device=device))

    def same_image(b: Any, h: Any, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return image[q] == image[k]

    total = len(image)
    block_mask = create_block_mask(same_image, None, None, total, total, device=device.type)
    function: Callable[..., Any] = _compiled_flex() if compiled else flex_attention  # type: ignore[assignment]

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        def heads_first(t: torch.Tensor) -> torch.Tensor:  # (T, H, hd) -> (1, H, T, hd)
            return t.transpose(0, 1).unsqueeze(0)

        out = function(heads_first(q), heads_first(k), heads_first(v), block_mask=block_mask)
        result: torch.Tensor = out[0].transpose(0, 1)
        return result

    return attend
