"""The official DINOv3 training forward of a RoPE ViT (student, EMA teacher and Gram teacher alike).

One call takes the crop groups of an iteration, global crops (with the student's iBOT masks) and
optionally local crops, and runs them through the blocks together, as official training does:

* the global crops' masked patches are replaced by ``mask_token`` before block 0 (local crops never);
* every block gets new RoPE tables for each group: in train mode each call draws the configured
  shift / jitter / rescale augmentation anew (in eval mode the tables are the same every time);
* stochastic depth (``drop_path_rate``, train mode) draws the attention branch's subset for each group,
  then the MLP branch's for each group, as the official list forward does;
* in train mode the local crops' CLS and storage tokens go through ``local_cls_norm`` when the model
  has one (``untie_global_and_local_cls_norm``); otherwise, and always in eval mode, the eval norms;
* RoPE runs in ``rope_dtype``: official training builds its backbones without passing the config's
  ``pos_embed_rope_dtype``, so periods, coordinates, angles, sin / cos and the rotated q / k are
  bfloat16 whatever the config says (the default here, :data:`OFFICIAL_TRAINING_ROPE_DTYPE`); pass
  None to use the dtype of the model's periods buffer (the config's, as the released models at
  inference). The periods buffer itself is left as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from dinofeat.models.dinov3.model import DinoV3VisionTransformer

#: The dtype official DINOv3 training computes RoPE in, whatever ``pos_embed_rope_dtype`` says.
OFFICIAL_TRAINING_ROPE_DTYPE = torch.bfloat16


@dataclass
class CropGroupOutput:
    """One crop group through the blocks and the final norm(s), named as the official output dict.

    Attributes:
        cls: (B, D) CLS token (``x_norm_clstoken``).
        storage: (B, R, D) storage tokens (``x_storage_tokens``).
        patches: (B, h*w, D) patch tokens, row by row (``x_norm_patchtokens``).
        prenorm: (B, 1 + R + h*w, D) the last block's output (``x_prenorm``).
        grid: (h, w) patch grid.
    """

    cls: torch.Tensor
    storage: torch.Tensor
    patches: torch.Tensor
    prenorm: torch.Tensor
    grid: tuple[int, int]


@dataclass
class TrainingOutput:
    """The global crops' outputs and, when given, the local crops'."""

    global_crops: CropGroupOutput
    local_crops: CropGroupOutput | None


def forward_training(model: DinoV3VisionTransformer, global_crops: torch.Tensor,
                     local_crops: torch.Tensor | None = None, *, masks: torch.Tensor | None = None,
                     rope_dtype: torch.dtype | None = OFFICIAL_TRAINING_ROPE_DTYPE) -> TrainingOutput:
    """Run ``global_crops`` (and ``local_crops``) through ``model`` as official training does.

    Args:
        model: The backbone; its mode (train / eval) decides the augmentations, stochastic depth and
            the local CLS norm.
        global_crops: (n_global * B, C, H, W) normalised global crops (crop-major).
        local_crops: (n_local * B, C, h, w) local crops, or None (teacher, Gram teacher).
        masks: (n_global * B, patches) bool iBOT masks of the global crops, or None.
        rope_dtype: dtype RoPE runs in (bfloat16 in official training); None: the periods' dtype.

    Example:
        >>> from dinofeat.models.dinov3 import DinoV3Config, DinoV3VisionTransformer
        >>> vit = DinoV3VisionTransformer(DinoV3Config(embed_dim=32, depth=2, num_heads=2, patch_size=8))
        >>> out = vit.forward_training(torch.randn(2, 3, 32, 32), torch.randn(4, 3, 16, 16))
        >>> out.global_crops.patches.shape, out.local_crops.cls.shape
        (torch.Size([2, 16, 32]), torch.Size([4, 32]))
    """
    groups = [(global_crops, masks)] if local_crops is None else [(global_crops, masks), (local_crops, None)]
    embedded = [model.embed_tokens(crops, masks=group_masks, rope_dtype=rope_dtype)
                for crops, group_masks in groups]
    xs = [tokens for tokens, _, _ in embedded]
    makers: list[Callable[[], tuple[torch.Tensor, torch.Tensor]]] = [make for _, _, make in embedded]
    ropes = [make() for make in makers]
    for index, block in enumerate(model.blocks):
        if index and model.rope_embed.augments:  # a new draw for every block and group
            ropes = [make() for make in makers]
        xs, _ = block(xs, ropes)
    outputs = [_group_output(model, x, grid, local=index == 1)
               for index, (x, (_, grid, _)) in enumerate(zip(xs, embedded, strict=True))]
    return TrainingOutput(outputs[0], outputs[1] if len(outputs) > 1 else None)


def _group_output(model: DinoV3VisionTransformer, x: torch.Tensor, grid: tuple[int, int], *, local: bool
                  ) -> CropGroupOutput:
    prefix = model.num_prefix_tokens
    if local and model.training and model.local_cls_norm is not None:
        head, patches = model.local_cls_norm(x[:, :prefix]), model.norm(x[:, prefix:])
    else:
        normed = model.final_norm(x)
        head, patches = normed[:, :prefix], normed[:, prefix:]
    return CropGroupOutput(head[:, 0], head[:, 1:], patches, x, grid)
