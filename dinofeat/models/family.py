"""What a backbone family is, as one record kept in the family's own folder.

Generic code (loading, ONNX export, the docs table, the trainer) never asks which family a model
is: it looks the family up (:func:`dinofeat.models.family_of`) and uses the record. Adding a family
is adding one folder with its config, module, key converters and record, and one row in
:data:`dinofeat.models.FAMILIES`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dinofeat.models.export_graph import ExportBuilder, TokenExport

StateDict = dict[str, torch.Tensor]
#: (HF transformers ``config.json`` dict, its state dict) -> (the family's config, the state in its keys).
TransformersReader = Callable[[Mapping[str, Any], Mapping[str, torch.Tensor]], tuple[Any, StateDict]]


@dataclass(frozen=True)
class ModelFamily:
    """One backbone family.

    Attributes:
        name: The ``family`` value of its configs (``"vit"``, ``"dinov3"``, ...).
        title: How people call it (``"DINOv3"``), for messages.
        config_type: Its frozen architecture dataclass (with a ``family`` field equal to ``name``,
            ``embed_dim`` and ``to_dict()``).
        backbone_type: The module it builds; answers the token interface (``forward_tokens``).
        to_backbone_keys: ``(state, config)`` -> the state dict in the module's keys, from any layout
            its released files use (official, timm); keys it does not know are left for strict
            loading to name.
        describe: ``config`` -> the architecture column of the docs' model table.
        signature_keys: State-dict keys whose presence marks a file of this family (for the hint
            when a file is given the architecture of another family).
        transformers_model_types: HF transformers ``model_type`` values it reads.
        from_transformers: ``(config.json dict, state)`` -> (its config, the state in its keys).
        export_module: Builds the module the ONNX graph is traced from; the default runs
            ``forward_tokens``.
        input_weight: The backbone's first convolution weight (D, in_chans, k, k), whose input
            channels a checkpoint may need adapted to the data's (``model.init`` with C-band data).
        layer_of_parameter: ``(parameter name inside the backbone, depth)`` -> 0 for the embeddings,
            i + 1 for block i, depth + 1 for what follows the blocks: what layer-wise lr decay needs.
            None: the family has no such layering.
    """

    name: str
    title: str
    config_type: type[Any]
    backbone_type: type[nn.Module]
    to_backbone_keys: Callable[[Mapping[str, torch.Tensor], Any], StateDict]
    describe: Callable[[Any], str]
    signature_keys: tuple[str, ...] = ()
    transformers_model_types: tuple[str, ...] = ()
    from_transformers: TransformersReader | None = None
    export_module: ExportBuilder = TokenExport
    input_weight: str | None = None
    layer_of_parameter: Callable[[str, int], int] | None = None

    def build(self, config: Any) -> nn.Module:
        """An untrained backbone (random initialisation) of ``config``."""
        return self.backbone_type(config)


def blocks_after(embeddings: tuple[str, ...]) -> Callable[[str, int], int]:
    """The layer numbering of a backbone of ``blocks.<i>``: 0 for the parameters named with one of the
    ``embeddings`` prefixes, i + 1 for block i, depth + 1 for the rest (the final norms)."""

    def layer_of_parameter(name: str, depth: int) -> int:
        if name.startswith(embeddings):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return depth + 1

    return layer_of_parameter


def with_training_fields(config: Any, family: ModelFamily, *, drop_path_rate: float | None = None,
                         in_chans: int | None = None) -> Any:
    """``config`` with its training-time fields set.

    ``drop_path_rate`` applies where the family has stochastic depth (the official trainers ignore it
    for the others, and so does this); ``in_chans`` other than 3 for a family whose input is fixed is
    an error naming it.
    """
    fields = {f.name for f in dataclasses.fields(config)}
    changes: dict[str, Any] = {}
    if drop_path_rate is not None and "drop_path_rate" in fields:
        changes["drop_path_rate"] = drop_path_rate
    if in_chans is not None:
        if "in_chans" not in fields and in_chans != 3:
            raise ValueError(f"{family.title} backbones take RGB images only, not {in_chans} channels")
        if "in_chans" in fields:
            changes["in_chans"] = in_chans
    return dataclasses.replace(config, **changes) if changes else config
