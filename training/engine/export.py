"""Export the teacher backbone of a training checkpoint to dinofeat's Hub format."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from dinofeat.hub.format import HubConfig, load_state_dict_strict, save_pretrained
from dinofeat.models import build_backbone
from dinofeat.training.config.train_config import (
    TrainConfig,
    config_from_dict,
    eval_preprocess,
    training_arch,
)
from dinofeat.training.engine.checkpoint import load_checkpoint
from dinofeat.utils.errors import HubUploadError

_RECIPES = {"dino": "DINO self-distillation (arXiv:2104.14294)",
            "dinov2": "DINOv2 (DINO + iBOT + KoLeo, arXiv:2304.07193)"}


def _model_card(name: str, cfg: TrainConfig, evaluation: dict[str, Any] | None, epoch: int) -> str:
    lines = [
        "---", "library_name: dinofeat", "tags: [dino, self-supervised, image-feature-extraction]", "---",
        f"# {name}", "",
        f"Teacher backbone of a {_RECIPES[cfg.objective.name]} run, after {epoch} epoch(s), trained with "
        "`dinofeat-train`.", "",
        "```python", "import dinofeat", f"model = dinofeat.load({name!r})  # or the folder path",
        "features = model.embed(images)", "```", "",
    ]
    if evaluation:
        lines += ["## Evaluation", "", "| metric | value |", "|---|---|"]
        lines += [f"| {key} | {value} |" for key, value in evaluation.items()]
        lines.append("")
    lines += ["## Training configuration", "", "```json", cfg.to_json().rstrip(), "```", ""]
    return "\n".join(lines)


def export_teacher(
    checkpoint: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    name: str | None = None,
    evaluation: dict[str, Any] | None = None,
    push_to_hub: str | None = None,
    private: bool = True,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write the teacher backbone of a dinofeat training checkpoint as a dinofeat model folder.

    Args:
        checkpoint: A ``checkpoint.pth`` written by the trainer.
        output_dir: Target folder (config.json + model.safetensors + README.md).
        name: Model name recorded in config.json and the card (default: the folder name).
        evaluation: Results to put in the card and metadata (e.g. ``{"knn_top1": 62.3}``).
        push_to_hub: A Hub repository id to upload the folder to (needs network and a token); the
            folder is written first, so a failed upload (:class:`~dinofeat.utils.errors.HubUploadError`) loses
            nothing.
        private: Create the Hub repository as private.
        dtype: Store the weights in this dtype (``torch.float16`` halves the file); float32 by default.

    Returns:
        The folder, loadable with ``dinofeat.load(folder)``.
    """
    ckpt = load_checkpoint(checkpoint)
    if ckpt.get("format") != "dinofeat-train":
        raise ValueError(f"{checkpoint} is not a dinofeat training checkpoint (no format tag)")
    cfg = config_from_dict(json.loads(ckpt["config"]))
    arch = training_arch(cfg)
    backbone = build_backbone(arch)
    prefix = "backbone."
    if "shards" in ckpt:  # run.strategy=fsdp: join the ranks' shards
        from dinofeat.training.engine.fsdp import full_state

        ckpt["teacher"] = full_state(Path(checkpoint), ckpt)["teacher"]
    network = ckpt.get("export_key", "teacher")  # a distillation checkpoint exports its student
    state = {k[len(prefix):]: v for k, v in ckpt[network].items() if k.startswith(prefix)}
    if "mask_token" not in backbone.state_dict():  # the ViT's iBOT mask token (DINOv2) is for training only
        state.pop("mask_token", None)
    load_state_dict_strict(backbone, state, origin=f"{checkpoint} ({network} backbone)")
    out = Path(output_dir)
    name = name or out.name
    preprocess = eval_preprocess(cfg)
    metadata = {"trained_with": "dinofeat-train", "epochs_done": int(ckpt["epoch"]),
                "evaluation": evaluation or {}, "training_config": cfg.to_dict()}
    card = _model_card(name, cfg, evaluation, int(ckpt["epoch"]))
    save_pretrained(backbone.to(torch.float32), out, HubConfig(arch=arch, preprocess=preprocess, name=name,
                                                               metadata=metadata), card=card, dtype=dtype)
    if push_to_hub is not None:
        _push(out, push_to_hub, private)
    return out


def _push(folder: Path, repo_id: str, private: bool) -> None:
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(folder),
                          commit_message="Upload DINO teacher (dinofeat)")
    except OSError as error:  # huggingface_hub's offline, token and HTTP errors are all OSErrors
        reason = str(error).splitlines()[0].rstrip(".") if str(error) else type(error).__name__
        raise HubUploadError(
            f"the model is exported to {folder}, but uploading it to the Hub repository {repo_id} failed: "
            f"{reason}. Upload the folder later with `hf upload {repo_id} {folder}`."
        ) from error
