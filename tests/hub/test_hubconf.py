"""hubconf.py: the official entry-point names through torch.hub (local source, no weights)."""

from __future__ import annotations

import importlib.util

import torch

import dinofeat
from dinofeat.hub.entrypoints import ENTRYPOINTS
from tests.helpers.common import REPO_ROOT

OFFICIAL = ["dino_vits16", "dino_vits8", "dino_vitb16", "dino_vitb8", "dino_resnet50", "dinov2_vits14",
            "dinov2_vitb14", "dinov2_vitl14", "dinov2_vitg14", "dinov2_vits14_reg", "dinov2_vitb14_reg",
            "dinov2_vitl14_reg", "dinov2_vitg14_reg", "dinov3_vits16", "dinov3_vits16plus", "dinov3_vitb16",
            "dinov3_vitl16", "dinov3_vith16plus", "dinov3_vit7b16"]
# The satellite DINOv3 weights have no hub names of their own officially (a weights= argument): zoo names.
SAT = ["dinov3_vitl16_sat", "dinov3_vit7b16_sat"]
OFFICIAL += ["dinov3_convnext_tiny", "dinov3_convnext_small", "dinov3_convnext_base", "dinov3_convnext_large"]
ALL = [*OFFICIAL, *SAT, "vit_t16_d4_imagenette"]  # plus dinofeat's own bundled model, under its zoo name


def test_every_official_name_is_an_entry_point():
    assert sorted(ENTRYPOINTS) == sorted(ALL)
    spec = importlib.util.spec_from_file_location("hubconf_under_test", REPO_ROOT / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    public = [name for name in vars(hubconf) if callable(getattr(hubconf, name)) and not name.startswith("_")]
    assert sorted(public) == sorted(ALL)
    assert "torch" in hubconf.dependencies


def test_torch_hub_load_local_returns_cls_module_with_dinofeat_methods():
    model = torch.hub.load(str(REPO_ROOT), "dino_vits16", source="local", pretrained=False)
    assert isinstance(model, dinofeat.FeatureExtractor)
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        cls = model(x)
    assert cls.shape == (2, 384)
    assert torch.allclose(cls, model.embed(x), atol=1e-6)
    assert model.cls_attention(x).shape == (2, 6, 2, 3)
    assert "DINO ViT-S/16" in ENTRYPOINTS["dino_vits16"].__doc__
