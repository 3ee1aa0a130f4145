"""The DINOv2 student and teacher: a ViT with the iBOT mask token, the DINO head and, optionally, a separate
iBOT head; forward passes that give what the losses read.

The student runs the global crops with their iBOT masks (masked patches replaced by the mask token) and
the local crops unmasked, two backbone calls (the official single list call with block-diagonal attention
computes the same per-image attention); the DINO head then runs once on the local and global CLS tokens and,
with a shared head, the masked patch tokens. The teacher runs the unmasked global crops; its CLS rows are
crop-swapped before the head (row r is the target of the student's row r of the other crop).
"""

from __future__ import annotations

import torch
from torch import nn

from dinofeat.models.vit.model import DinoVisionTransformer
from dinofeat.training.objectives.dino.head import official_head_keys_to_parametrized

StudentOutputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
"""(global CLS after the backbone's norm (2B, D), local CLS logits (n_local B, K), global CLS logits (2B, K),
masked-patch logits (M, K_ibot))."""


def swap_crops(rows: torch.Tensor) -> torch.Tensor:
    """(2B, ...) rows of the two global crops with the crops exchanged.

    Example:
        >>> swap_crops(torch.arange(4))
        tensor([2, 3, 0, 1])
    """
    first, second = rows.chunk(2)
    return torch.cat((second, first))


class DinoV2Network(nn.Module):
    """Backbone + DINO head (+ iBOT head, or None to share the DINO head).

    Args:
        backbone: A ViT with its mask token (:meth:`DinoVisionTransformer.add_mask_token`).
        dino_head: Head of the CLS tokens.
        ibot_head: Head of the masked patch tokens; None: the DINO head serves both.
    """

    def __init__(self, backbone: DinoVisionTransformer, dino_head: nn.Module, ibot_head: nn.Module | None,
                 ) -> None:
        super().__init__()
        self.backbone = backbone
        self.dino_head = dino_head
        self.ibot_head = ibot_head

    def parts(self) -> dict[str, nn.Module]:
        """The sub-modules the official code clips and groups separately: backbone, dino_head(, ibot_head)."""
        parts = {"backbone": self.backbone, "dino_head": self.dino_head}
        if self.ibot_head is not None:
            parts["ibot_head"] = self.ibot_head
        return parts

    def _heads(self, cls_rows: list[torch.Tensor], masked: torch.Tensor, rows: int,
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(CLS logits, masked-patch logits): one DINO head call on everything when the head is shared. The
        masked tokens are zero-padded to ``rows`` as the official static buffer (the padding's outputs are
        dropped; it keeps the head's matrix products, and so their rounding, those of the official code)."""
        n_masked = len(masked)
        if rows > n_masked:
            masked = torch.cat([masked, masked.new_zeros(rows - n_masked, masked.shape[1])])
        if self.ibot_head is None:
            n_cls = sum(len(part) for part in cls_rows)
            out = self.dino_head(torch.cat([*cls_rows, masked]))
            return out[:n_cls], out[n_cls:n_cls + n_masked]
        return self.dino_head(torch.cat(cls_rows)), self.ibot_head(masked)[:n_masked]

    def forward(self, global_crops: torch.Tensor, local_crops: torch.Tensor | None,
                masks: torch.Tensor | None,
                mask_indices: torch.Tensor, padded_rows: int = 0,
                ) -> StudentOutputs | tuple[torch.Tensor, torch.Tensor]:
        """The student's pass (see :data:`StudentOutputs`), or with ``masks`` None the teacher's
        (:meth:`teacher_pass`). One ``forward`` for both so that module hooks (DDP, FSDP) run for either.

        Args:
            global_crops: (2B, C, H, W), crop-major.
            local_crops: (n_local B, C, h, w), crop-major, or None without local crops.
            masks: (2B, N) bool iBOT masks of the global crops; None: the teacher's pass.
            mask_indices: (M,) masked positions in the flattened (2B * N) patch tokens.
            padded_rows: Rows of the masked-token buffer the heads see (the official ``upperbound``; at most
                M means no padding).
        """
        if masks is None:
            return self.teacher_pass(global_crops, mask_indices, padded_rows)
        out = self.backbone.forward_tokens(global_crops, masks=masks)
        cls_global = out.cls
        masked = out.patches.flatten(0, 1).index_select(0, mask_indices)
        cls_local = self.backbone(local_crops) if local_crops is not None else cls_global[:0]
        logits, masked_logits = self._heads([cls_local, cls_global], masked, padded_rows)
        return cls_global, logits[: len(cls_local)], logits[len(cls_local):], masked_logits

    def teacher_pass(self, global_crops: torch.Tensor, mask_indices: torch.Tensor, padded_rows: int = 0,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's pass on the unmasked global crops: (crop-swapped CLS logits (2B, K), logits of the
        patches at ``mask_indices`` (M, K_ibot))."""
        out = self.backbone.forward_tokens(global_crops)
        masked = out.patches.flatten(0, 1).index_select(0, mask_indices)
        return self._heads([swap_crops(out.cls)], masked, padded_rows)


def official_network_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys of an official DINOv2 student or teacher (``backbone.*``, ``dino_head.*``, ``ibot_head.*``) ->
    :class:`DinoV2Network` keys (``register_tokens`` -> ``reg_token``, the heads' ``weight_g`` / ``weight_v``
    -> their parametrization names).

    Example:
        >>> sorted(official_network_keys({"backbone.register_tokens": torch.zeros(1)}))
        ['backbone.reg_token']
    """
    renamed = {("backbone.reg_token" if key == "backbone.register_tokens" else key): value
               for key, value in state.items()}
    return official_head_keys_to_parametrized(renamed)
