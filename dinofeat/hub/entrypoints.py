"""torch.hub entry points with the official names, generated from the registry.

``hubconf.py`` at the repository root publishes :data:`ENTRYPOINTS`, so
``torch.hub.load(repo, "dino_vits16")`` works like the official DINO / DINOv2 hub entries:
the returned module's ``forward(x)`` gives the CLS feature, and it also has dinofeat's
methods (``embed``, ``patch_tokens``, ``cls_attention``, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dinofeat.features.extractor import FeatureExtractor
from dinofeat.hub.loading import load
from dinofeat.registry import ZOO


def entrypoint_name(model_name: str) -> str:
    """The official hub name of a zoo model: ``vit_s16`` -> ``dino_vits16``, ``resnet50`` ->
    ``dino_resnet50``; DINOv2 and DINOv3 names are already official (``dinov3_vitb16``; the
    satellite models keep their zoo names, ``dinov3_vitl16_sat``), and dinofeat's own bundled
    model keeps its zoo name.

    Example:
        >>> entrypoint_name("vit_b8"), entrypoint_name("dinov2_vitl14_reg")
        ('dino_vitb8', 'dinov2_vitl14_reg')
    """
    if model_name.startswith(("dinov2_", "dinov3_")) or ZOO[model_name].source.package_path:
        return model_name
    return "dino_" + model_name.replace("_", "")


def _make_entrypoint(model_name: str) -> Callable[..., FeatureExtractor]:
    spec = ZOO[model_name]

    def entrypoint(pretrained: bool = True, **kwargs: Any) -> FeatureExtractor:
        kwargs.setdefault("device", "cpu")  # the official entry points return a CPU model
        return load(model_name, pretrained=pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = entrypoint_name(model_name)
    knn = f" k-NN top-1 {spec.knn_top1}%." if spec.knn_top1 is not None else ""
    entrypoint.__doc__ = (
        f"{spec.description} (dinofeat model {model_name!r}, {spec.embed_dim}-d features).{knn}\n\n"
        "Args:\n    pretrained: Load the published weights (False: random initialisation).\n"
        "    **kwargs: Passed to dinofeat.load (device, dtype).\n"
    )
    return entrypoint


#: Official hub name -> entry point, one per zoo model.
ENTRYPOINTS: dict[str, Callable[..., FeatureExtractor]] = {
    entrypoint_name(name): _make_entrypoint(name) for name in ZOO
}
