"""``dinofeat.load``: one entry point for every way a DINO model can be named.

Sources, tried in this order: an architecture (random init); ``hf-hub:org/repo[@revision]``;
a zoo name; a local folder (dinofeat format or HF transformers format); a bare weights file
(``.safetensors``, an official ``.pth`` state dict or full training checkpoint). Every path
ends in :func:`~dinofeat.hub.format.load_state_dict_strict`: a key that does not fit is an error.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from dinofeat.config.preprocess import PreprocessConfig
from dinofeat.features.extractor import FeatureExtractor
from dinofeat.hub.checkpoints import backbone_from_checkpoint
from dinofeat.hub.download import hf_file, package_folder, url_file
from dinofeat.hub.format import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    HubConfig,
    is_dinofeat_config,
    load_state_dict_strict,
    read_config,
)
from dinofeat.hub.weight_files import read_safetensors, read_weights
from dinofeat.models import FAMILIES, ArchConfig, Backbone, arch_from_dict, build_backbone, family_of
from dinofeat.registry import ZOO, ModelSpec, get_spec
from dinofeat.utils.devices import auto_device, require_device
from dinofeat.utils.errors import WeightsMismatchError

Source = str | os.PathLike[str] | ArchConfig | dict[str, Any]
ArchLike = ArchConfig | dict[str, Any] | str

HF_HUB_PREFIX = "hf-hub:"
#: The HF transformers ``model_type`` values some family reads.
TRANSFORMERS_MODEL_TYPES = tuple(t for family in FAMILIES.values() for t in family.transformers_model_types)


def _as_arch(arch: ArchLike) -> ArchConfig:
    if isinstance(arch, str):
        return get_spec(arch).arch
    if isinstance(arch, dict):
        return arch_from_dict(dict(arch))
    return arch


def _finish(backbone: Backbone, preprocess: PreprocessConfig, name: str | None,
            device: str | torch.device | None, dtype: torch.dtype | None) -> FeatureExtractor:
    target = require_device(device) if device is not None else auto_device()
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch dtype such as torch.float16 or torch.bfloat16, "
                        f"got {dtype!r}")
    extractor = FeatureExtractor(backbone, preprocess, name=name)
    return extractor.to(device=target, dtype=dtype) if dtype is not None else extractor.to(target)


def _family_hint(arch: ArchConfig, state: dict[str, torch.Tensor]) -> str:
    """Why a file may not fit: it holds the signature keys of another family than ``arch``'s."""
    own = family_of(arch)
    if any(key in state for key in own.signature_keys):
        return ""
    for family in FAMILIES.values():
        found = [key for key in family.signature_keys if key in state]
        if family is not own and found:
            return (f" (the file holds {', '.join(found)}: a {family.title} file, not {own.title}; "
                    f"pass a {family.name} arch)")
    return ""


def _build_strict(arch: ArchConfig, state: dict[str, torch.Tensor], origin: str) -> Backbone:
    backbone = build_backbone(arch)
    try:
        load_state_dict_strict(backbone, state, origin)
    except WeightsMismatchError as error:
        hint = _family_hint(arch, state)
        if not hint:
            raise
        raise WeightsMismatchError(f"{error}{hint}") from None
    return backbone


def parse_hf_hub(source: str) -> tuple[str, str | None]:
    """``"hf-hub:org/repo@rev"`` -> ``("org/repo", "rev")``; the revision is None when absent.

    Example:
        >>> parse_hf_hub("hf-hub:facebook/dino-vits16@main")
        ('facebook/dino-vits16', 'main')
    """
    body = source[len(HF_HUB_PREFIX):] if source.startswith(HF_HUB_PREFIX) else source
    repo, _, revision = body.partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise ValueError(f"expected hf-hub:org/repo[@revision], got {source!r}")
    return repo, revision or None


def _from_folder_files(config: dict[str, Any], weights: Path, origin: str
                       ) -> tuple[Backbone, PreprocessConfig, str | None]:
    """Build from a ``config.json`` dict (dinofeat or transformers format) and its safetensors file."""
    state = read_safetensors(weights)
    if is_dinofeat_config(config):
        hub_config = HubConfig.from_dict(config, origin=f"{origin}/{CONFIG_FILE}")
        return _build_strict(hub_config.arch, state, origin), hub_config.preprocess, hub_config.name
    for family in FAMILIES.values():
        reader = family.from_transformers
        if reader is not None and config.get("model_type") in family.transformers_model_types:
            arch, converted = reader(config, state)
            return _build_strict(arch, converted, origin), PreprocessConfig(), None
    raise ValueError(
        f"{origin}/{CONFIG_FILE} is neither a dinofeat config (format 'dinofeat') nor an HF transformers "
        f"config (model_type {' / '.join(TRANSFORMERS_MODEL_TYPES)}), got {config.get('model_type')!r}"
    )


def _load_folder(folder: Path) -> tuple[Backbone, PreprocessConfig, str | None]:
    config = read_config(folder / CONFIG_FILE)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"no {WEIGHTS_FILE} in {folder}")
    backbone, preprocess, name = _from_folder_files(config, weights, str(folder))
    return backbone, preprocess, name or folder.name


def _load_hf_hub(source: str) -> tuple[Backbone, PreprocessConfig, str | None]:
    repo, revision = parse_hf_hub(source)
    config = read_config(hf_file(repo, CONFIG_FILE, revision))
    weights = hf_file(repo, WEIGHTS_FILE, revision)
    backbone, preprocess, name = _from_folder_files(config, weights, f"hf-hub:{repo}")
    return backbone, preprocess, name or repo


def _zoo_weights(spec: ModelSpec) -> Backbone:
    """Fetch a zoo model's weights (Hub, URL or bundled) and load them strictly."""
    src = spec.source
    if src.package_path is not None:
        with package_folder(src.package_path) as folder:
            return _load_folder(folder)[0]
    if src.repo_id is not None:
        if src.layout == "dinofeat" or src.layout == "transformers":
            return _load_hf_hub(f"{HF_HUB_PREFIX}{src.repo_id}@{src.revision}")[0]
        path = hf_file(src.repo_id, src.filename, src.revision)
        origin = f"hf-hub:{src.repo_id}/{src.filename}@{src.revision}"
    elif src.url is not None:
        path = url_file(src.url)
        origin = src.url
    else:
        raise ValueError(f"zoo entry {spec.name!r} names no weights source")
    state = backbone_from_checkpoint(read_weights(path))
    return _build_strict(spec.arch, family_of(spec.arch).to_backbone_keys(state, spec.arch), origin)


def _load_file(path: Path, arch: ArchLike | None, checkpoint_key: str
               ) -> tuple[Backbone, PreprocessConfig, str | None]:
    if arch is None:
        raise ValueError(
            f"{path} is a bare weights file: pass arch= (a zoo name such as 'vit_s16' or 'dinov3_vitb16', "
            "a ViTConfig / DinoV3Config, or a dict of hyper-parameters: patch_size, embed_dim, depth, "
            "num_heads, ...; {'family': 'dinov3', ...} for DINOv3)"
        )
    config = _as_arch(arch)
    preprocess = get_spec(arch).preprocess if isinstance(arch, str) else PreprocessConfig()
    state = backbone_from_checkpoint(read_weights(path), checkpoint_key)
    backbone = _build_strict(config, family_of(config).to_backbone_keys(state, config), str(path))
    return backbone, preprocess, path.stem


def load(
    source: Source,
    *,
    arch: ArchLike | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    pretrained: bool = True,
    checkpoint_key: str = "teacher",
) -> FeatureExtractor:
    """Load a DINO model as a :class:`~dinofeat.features.extractor.FeatureExtractor`.

    Args:
        source: A zoo name (``"vit_s8"``, see :func:`dinofeat.list_models`);
            ``"hf-hub:org/repo[@revision]"`` (a dinofeat-format repository, or an HF transformers
            ViT / DINOv2 repository such as ``facebook/dino-vits16``); a local folder in either
            format; a bare weights file (``.safetensors``, official ``.pth`` state dict or full
            training checkpoint; an official DINOv3 ``.pth``, or timm / HF DINOv3 weights); or an
            architecture (:class:`~dinofeat.models.vit.config.ViTConfig`,
            :class:`~dinofeat.models.dinov3.config.DinoV3Config`, ... or a dict of its fields) for a
            randomly initialised model.
        arch: Architecture of a bare weights file: a zoo name, a config or a dict.
        device: Defaults to cuda, then mps, then cpu.
        dtype: E.g. ``torch.bfloat16`` on a GPU; float32 by default. Outputs are float32 regardless.
        pretrained: ``False`` builds the source's architecture (and keeps its preprocessing) with random
            weights: a zoo name fetches nothing; any other source is read once for its architecture.
        checkpoint_key: Network taken from a full training checkpoint (``"teacher"`` or ``"student"``).

    Returns:
        The model in eval mode on ``device``.

    Raises:
        KeyError: unknown zoo name (with close matches).
        WeightsMismatchError: weights that do not fit the architecture (naming the keys).
        OfflineModelError: ``HF_HUB_OFFLINE=1`` and the weights are not cached.
        GatedModelError: a gated Hub repository (DINOv3) refused the download (no token or no access).

    Example:
        >>> import dinofeat
        >>> model = dinofeat.load("vit_s16", pretrained=False, device="cpu")
        >>> model.embed_dim
        384
    """
    if not isinstance(source, (str, os.PathLike)):  # an architecture: random initialisation
        if arch is not None:
            raise ValueError(
                "pass weights as `source` and the architecture as `arch`, not both as architectures")
        return _finish(build_backbone(_as_arch(source)), PreprocessConfig(), None, device, dtype)
    text = os.fspath(source)
    if arch is not None and (text.startswith(HF_HUB_PREFIX) or text in ZOO or Path(text).is_dir()):
        raise ValueError(f"arch= is for a bare weights file; {text!r} names its own architecture")
    if not pretrained and text not in ZOO:
        # Read once for its architecture and preprocessing; the random weights are drawn from the
        # generator state of the call, so a seed gives what it gives for the same zoo architecture.
        rng_state = torch.random.get_rng_state()
        source_model = load(text, arch=arch, device="cpu", checkpoint_key=checkpoint_key)
        torch.random.set_rng_state(rng_state)
        random_backbone = build_backbone(source_model.backbone.config)
        return _finish(random_backbone, source_model.preprocess, None, device, dtype)
    if text.startswith(HF_HUB_PREFIX):
        return _finish(*_load_hf_hub(text), device, dtype)
    if text in ZOO:
        spec = ZOO[text]
        backbone = _zoo_weights(spec) if pretrained else build_backbone(spec.arch)
        return _finish(backbone, spec.preprocess, spec.name, device, dtype)
    path = Path(text)
    if path.is_dir():
        return _finish(*_load_folder(path), device, dtype)
    if path.is_file():
        return _finish(*_load_file(path, arch, checkpoint_key), device, dtype)
    if path.suffix or os.sep in text:
        raise FileNotFoundError(f"no such model folder or weights file: {text}")
    get_spec(text)  # raises KeyError with close matches for anything else
    raise AssertionError("unreachable")
