"""The named outputs of :meth:`~dinofeat.features.extractor.FeatureExtractor.features`, read off one
forward pass.

A :class:`~dinofeat.models.tokens.TokenOutput` already holds everything a batch can give; this
module only names the pieces, checks a request against what the backbone can answer, and
slices them out (float32, in the layouts the single-purpose methods have always returned).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from dinofeat.models.tokens import TokenOutput

#: Every output name, with its per-batch layout (N rows, grid h x w, D dims, R registers).
FEATURE_OUTPUTS: dict[str, str] = {
    "cls": "(N, D) global feature: the final-normed CLS token (a CNN: its pooled vector)",
    "patches": "(N, h, w, D) final-normed patch tokens",
    "registers": "(N, R, D) register / storage tokens, final-normed (R = 0 when the model has none)",
    "attention": "(N, heads, h, w) last block's CLS-to-patch attention, as cls_attention gives it",
    "layers": "(n_layers, N, tokens, D) the last n_layers blocks through the final norm, "
              "as intermediate_layers gives them",
}


@dataclass
class FeatureBatch:
    """What :meth:`~dinofeat.features.extractor.FeatureExtractor.iter_features` yields per batch.

    Attributes:
        indices: Positions of this batch's rows in the whole input.
        paths: One entry per row: the image file it came from, or None for an in-memory image.
        outputs: The requested outputs of these rows (``layers`` has its rows on dim 1).
    """

    indices: range
    paths: tuple[Path | None, ...]
    outputs: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return len(self.indices)


def check_outputs(outputs: str | Sequence[str], *, model: str, has_attention: bool, depth: int,
                  n_layers: int) -> tuple[str, ...]:
    """The requested output names, de-duplicated in order, or a clear error.

    Raises:
        ValueError: an unknown name, an empty request, or ``n_layers`` outside [1, depth].
        TypeError: ``attention`` / ``layers`` asked of a CNN.
    """
    names = (outputs,) if isinstance(outputs, str) else tuple(dict.fromkeys(outputs))
    if not names:
        raise ValueError(f"outputs is empty; choose from {', '.join(FEATURE_OUTPUTS)}")
    unknown = [name for name in names if name not in FEATURE_OUTPUTS]
    if unknown:
        raise ValueError(f"unknown feature output(s) {', '.join(map(repr, unknown))}; "
                         f"choose from {', '.join(FEATURE_OUTPUTS)}")
    cnn_lacks = {"attention": "attention"} if not has_attention else {}
    if depth == 0:
        cnn_lacks["layers"] = "blocks"
    for name, lacks in cnn_lacks.items():
        if name in names:
            raise TypeError(f"output {name!r} needs a Vision Transformer; {model} is a CNN and has no "
                            f"{lacks} (use cls or patches)")
    if "layers" in names and not 1 <= n_layers <= depth:
        raise ValueError(f"n_layers must be between 1 and the depth {depth}, got {n_layers}")
    return names


def read_outputs(out: TokenOutput, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Slice the named outputs out of one batch's :class:`TokenOutput` (float32)."""
    result: dict[str, torch.Tensor] = {}
    for name in names:
        if name == "cls":
            result[name] = out.cls.float()
        elif name == "patches":
            result[name] = out.patch_grid().float()
        elif name == "registers":
            result[name] = out.registers.float()
        elif name == "attention":
            assert out.cls_attention is not None  # requested from the backbone with the name
            h, w = out.grid
            patch_part = out.cls_attention[:, :, out.num_prefix:]
            result[name] = patch_part.reshape(*patch_part.shape[:2], h, w).float()
        else:
            if len({layer.shape[1:] for layer in out.intermediates}) > 1:
                raise ValueError("the layers of this model differ in width and grid (ConvNeXt stages); "
                                 "intermediate_layers() returns them as a list")
            result[name] = torch.stack(out.intermediates).float()
    return result


def concat_batches(batches: Sequence[dict[str, torch.Tensor]], names: Sequence[str]
                   ) -> dict[str, torch.Tensor]:
    """Join per-batch outputs along their row dimension (dim 1 for ``layers``, 0 otherwise)."""
    if not batches:
        raise ValueError("no images given (an empty batch)")
    return {name: torch.cat([batch[name] for batch in batches], dim=1 if name == "layers" else 0)
            for name in names}
