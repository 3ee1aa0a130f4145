"""The one-step golden (train_step.safetensors) loaded into dinofeat DINOv3 backbones and DINOv3 heads, and
the forward half of the step replayed through them.

Everything the optimiser side needs (the Sinkhorn-Knopp targets, the DINO / iBOT losses, backward, clipping,
AdamW, EMA, Gram refresh) is the integration's; what is here is the part that depends on the models only.
Every shape comes from the files: the architecture from the state dict and the official ``student`` config
section, the crop counts from the inputs.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

import torch

from dinofeat.models.dinov3 import DinoV3Config, DinoV3VisionTransformer
from dinofeat.models.dinov3.training import OFFICIAL_TRAINING_ROPE_DTYPE
from dinofeat.training.objectives.dinov3.gram import resize_patch_features
from dinofeat.training.objectives.dinov3.head import DINOv3Head
from tests.helpers.dinov3_train import golden_json, golden_tensors

#: The official ``student`` config keys that are not DinoV3Config fields under the same name.
_RENAMED = {"layerscale": "layerscale_init"}
HEADS = ("dino_head", "ibot_head")


def substate(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under ``prefix.`` with the prefix removed."""
    return {key[len(prefix) + 1:]: value for key, value in tensors.items() if key.startswith(prefix + ".")}


def step_arch(backbone: dict[str, torch.Tensor], student: dict[str, Any]) -> DinoV3Config:
    """The DinoV3Config of an official backbone state dict: widths and depth from the tensors (the heads
    from the RoPE periods, ``head_dim / 4`` of them), the rest from the official ``student`` section."""
    fields = {f.name for f in dataclasses.fields(DinoV3Config)}
    kwargs = {_RENAMED.get(k, k): v for k, v in student.items() if _RENAMED.get(k, k) in fields}
    embed_dim = backbone["cls_token"].shape[-1]
    head_dim = 4 * backbone["rope_embed.periods"].numel()
    depth = 1 + max(int(key.split(".")[1]) for key in backbone if key.startswith("blocks."))
    shape = {"embed_dim": embed_dim, "depth": depth, "num_heads": embed_dim // head_dim}
    return DinoV3Config(**{**kwargs, **shape})


def head_from_state(state: dict[str, torch.Tensor]) -> DINOv3Head:
    """A DINOv3 head shaped by an official head state dict (``mlp.<i>.weight``, ``last_layer.weight``),
    loaded strictly."""
    linears = sorted((k for k in state if re.fullmatch(r"mlp(\.\d+)?\.weight", k)),
                     key=lambda k: int(k.split(".")[1]) if k.count(".") == 2 else 0)
    in_dim, bottleneck = state[linears[0]].shape[1], state[linears[-1]].shape[0]
    hidden = state[linears[0]].shape[0] if len(linears) > 1 else bottleneck
    head = DINOv3Head(in_dim, state["last_layer.weight"].shape[0], hidden, bottleneck, len(linears))
    head.load_state_dict(state, strict=True)
    return head


@dataclass
class StepModels:
    """Student (train mode), EMA teacher and Gram teacher (eval mode) backbones, and the four heads keyed
    ``"student.dino_head"``, ``"teacher.ibot_head"``, ..."""

    student: DinoV3VisionTransformer
    teacher: DinoV3VisionTransformer
    gram_teacher: DinoV3VisionTransformer
    heads: dict[str, DINOv3Head]


def load_step_models(stage: str = "before") -> StepModels:
    """The golden's ``before.*`` (or ``after.*``: student and teacher only) weights, loaded strictly."""
    tensors, config = golden_tensors("train_step"), golden_json()["train_step"]["config"]
    backbones = {}
    for role in ("student", "teacher", "gram_teacher"):
        state = substate(tensors, f"{stage}.{role}.backbone")
        if not state:
            continue
        model = DinoV3VisionTransformer(step_arch(state, config["student"]))
        model.load_state_dict(state, strict=True)
        backbones[role] = model.train(role == "student")
    heads = {f"{role}.{head}": head_from_state(substate(tensors, f"{stage}.{role}.{head}"))
             for role in ("student", "teacher") for head in HEADS}
    gram_teacher = backbones.get("gram_teacher", backbones["teacher"])
    return StepModels(backbones["student"], backbones["teacher"], gram_teacher, heads)


def replay_forward(models: StepModels, rope_dtype: torch.dtype | None = OFFICIAL_TRAINING_ROPE_DTYPE
                   ) -> dict[str, torch.Tensor]:
    """The step's forward through dinofeat, named as the golden's ``intermediate.*`` tensors (those that
    need no Sinkhorn-Knopp): teacher CLS logits, the student's backbone outputs and head outputs, and the
    Gram teacher's patch tokens resized to the student's grid."""
    tensors, config = golden_tensors("train_step"), golden_json()["train_step"]["config"]
    global_crops, local_crops = tensors["input.collated_global_crops"], tensors["input.collated_local_crops"]
    n_local = config["crops"]["local_crops_number"]
    batch = local_crops.shape[0] // n_local
    n_global = global_crops.shape[0] // batch
    heads = models.heads
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        teacher = models.teacher.forward_training(global_crops, rope_dtype=rope_dtype).global_crops
        teacher_logits = heads["teacher.dino_head"](teacher.cls)
        out["teacher.cls_after_head"] = teacher_logits.unflatten(0, (n_global, batch))
        gram = models.gram_teacher.forward_training(tensors["input.collated_gram_teacher_crops"],
                                                    rope_dtype=rope_dtype).global_crops
    student = models.student.forward_training(global_crops, local_crops,
                                              masks=tensors["input.collated_masks"], rope_dtype=rope_dtype)
    g, loc = student.global_crops, student.local_crops
    assert loc is not None
    out["gram.teacher_patches"] = resize_patch_features(
        gram.patches, gram.grid, g.grid, mode=config["gram"]["global_teacher_resize_method"],
        antialias=config["gram"]["global_teacher_resize_antialias"])
    logits = heads["student.dino_head"](torch.cat([g.cls, loc.cls]))
    masked = g.patches.flatten(0, 1).index_select(0, tensors["input.mask_indices_list"])
    out.update({
        "student_global.cls_pre_head": g.cls.unflatten(0, (n_global, batch)),
        "student_global.reg_pre_head": g.storage.unflatten(0, (n_global, batch)),
        "student_global.patch_pre_head": g.patches.unflatten(0, (n_global, batch)),
        "student_global.cls_after_head": logits[: len(g.cls)].unflatten(0, (n_global, batch)),
        "student_global.masked_patch_after_head": heads["student.ibot_head"](masked),
        "student_local.cls_pre_head": loc.cls.unflatten(0, (n_local, batch)),
        "student_local.cls_after_head": logits[len(g.cls):].unflatten(0, (n_local, batch)),
    })
    return out
