"""The last block's CLS-query attention, taken from the same forward pass.

Fused attention kernels (``scaled_dot_product_attention``, xFormers) never materialise the
attention matrix, which is why DINOv2 and timm cannot hand it out. Only one row of it is
needed for DINO's attention maps: the CLS query against every key. This module computes
that row explicitly from the block's own q and k, softmax((q_cls . k^T) * scale) in the
official order, while the block's output itself still goes through the fused kernel.
The extra cost is one (heads x 1 x N) product per image.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def block_with_cls_attention(block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a timm ViT ``Block`` and also return its CLS-query attention probabilities.

    Args:
        block: A ``timm.models.vision_transformer.Block`` whose ``attn`` is timm's ``Attention``.
        x: Block input (B, N, D), token 0 being CLS.

    Returns:
        The block output (B, N, D), bit-for-bit what ``block(x)`` gives, and the CLS row of the
        attention probabilities (B, heads, N), each row summing to 1 over all N keys.
    """
    # timm's Block / Attention attributes are untyped nn.Module members; read them dynamically.
    blk: Any = block
    attn: Any = blk.attn
    if getattr(attn, "gate", None) is not None:
        raise NotImplementedError("gated attention is not supported for attention extraction")
    y = blk.norm1(x)
    batch, n_tokens, _ = y.shape
    qkv = attn.qkv(y).reshape(batch, n_tokens, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    # Official order: scale the product, not q (identical bits when the scale is a power of two).
    logits = (q[:, :, :1] @ k.transpose(-2, -1)) * attn.scale
    cls_attention = logits.float().softmax(dim=-1)[:, :, 0].to(x.dtype)
    if attn.fused_attn:
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=attn.attn_drop.p if attn.training else 0.0)
    else:
        weights = attn.attn_drop(((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1))
        out = weights @ v
    out = out.transpose(1, 2).reshape(batch, n_tokens, attn.attn_dim)
    out = attn.proj_drop(attn.proj(attn.norm(out)))
    x = x + blk.drop_path1(blk.ls1(out))
    x = x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))
    return x, cls_attention


def first_query_attention(attn: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """timm ``Attention``'s output at the first token only, (B, 1, D): every token is a key and a value,
    but only token 0 is a query, and the projection runs on one row per image.

    The same function as ``attn(y)[:, :1]`` (up to rounding in the products of other shapes); what a
    last block computes when only the CLS token is read after it.
    """
    a: Any = attn
    if getattr(a, "gate", None) is not None:
        raise NotImplementedError("gated attention is not supported by first_query_attention")
    batch, n_tokens, _ = y.shape
    dim, heads, head_dim = a.attn_dim, a.num_heads, a.head_dim
    weight, bias = a.qkv.weight, a.qkv.bias
    q = F.linear(y[:, :1], weight[:dim], None if bias is None else bias[:dim])
    kv = F.linear(y, weight[dim:], None if bias is None else bias[dim:])
    q = q.reshape(batch, 1, heads, head_dim).transpose(1, 2)
    k, v = kv.reshape(batch, n_tokens, 2, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = a.q_norm(q), a.k_norm(k)
    if a.fused_attn:
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=a.attn_drop.p if a.training else 0.0)
    else:
        out = a.attn_drop(((q * a.scale) @ k.transpose(-2, -1)).softmax(dim=-1)) @ v
    out = out.transpose(1, 2).reshape(batch, 1, dim)
    result: torch.Tensor = a.proj_drop(a.proj(a.norm(out)))
    return result
