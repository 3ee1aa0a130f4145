"""ONNX export: every family (tiny models), every output set, dynamic and fixed sizes, checked with
onnxruntime; the graph runs without torch; bad requests are clear errors that write nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import dinofeat
import dinofeat.export.onnx as onnx_export
from dinofeat.cli import main
from dinofeat.config.preprocess import PreprocessConfig
from dinofeat.export.onnx import OnnxCheckError, export_onnx
from dinofeat.models.export_graph import UnsupportedOutputError
from tests.helpers.evaluation import save_tiny_model

pytest.importorskip("onnxruntime", reason="needs the onnx extra (pip install 'dinofeat[onnx]')")

# Tiny members of each ViT family; crop = the stored grid, so the check also meets the
# "keep the stored table" case of the official position-embedding rule.
FAMILIES = {
    "dino_v1": ({"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 32}, 40, 32),
    "dinov2": ({"patch_size": 14, "embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 28,
                "layer_scale_init": 1e-5, "mlp": "swiglu", "mlp_ratio": 5.33334}, 32, 28),
    "dinov2_registers": ({"patch_size": 14, "embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 28,
                          "layer_scale_init": 1e-5, "num_register_tokens": 4, "pos_embed_has_cls": False,
                          "interpolate_offset": 0.0, "interpolate_antialias": True}, 32, 28),
}
OUTPUT_SETS = [("cls",), ("cls", "patches"), ("cls", "patches", "attention"), ("attention",)]


def _tiny(family: str) -> dinofeat.FeatureExtractor:
    torch.manual_seed(0)
    arch, resize, crop = FAMILIES[family]
    model = dinofeat.load(arch, device="cpu")
    # Random weights hardly move the position embedding: make it large so that resampling errors show.
    assert model.backbone.pos_embed is not None
    with torch.no_grad():
        model.backbone.pos_embed.normal_()
    model.preprocess = PreprocessConfig(resize=resize, crop=crop)
    return model


def _run(path: Path, images: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip(names, session.run(names, {"images": images}), strict=True))


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("outputs", OUTPUT_SETS, ids="+".join)
def test_dynamic_vit_export_matches_pytorch_at_any_size(family, outputs, tmp_path):
    model = _tiny(family)
    result = export_onnx(model, tmp_path / "m.onnx", dynamic=True, outputs=outputs)
    crop, patch = model.preprocess.crop, model.patch_size
    assert result.checked_shapes[0] == (1, 3, crop, crop) and result.checked_shapes[1][2:] != (crop, crop)
    assert set(result.differences) == set(outputs) and max(result.differences.values()) <= 1e-4
    # A third size, never seen at export time.
    images = torch.randn(3, 3, 3 * patch + 5, 5 * patch)
    got = _run(result.path, images.numpy(), list(outputs))
    expected = {"cls": model.embed(images), "patches": model.patch_tokens(images),
                "attention": model.cls_attention(images)}
    for name in outputs:
        assert got[name].shape == tuple(expected[name].shape)
        assert np.abs(got[name] - expected[name].numpy()).max() <= 1e-4, name


V3 = {"family": "dinov3", "patch_size": 16, "embed_dim": 32, "depth": 2, "num_heads": 2,
      "n_storage_tokens": 4, "mask_k_bias": True, "layerscale_init": 1e-5}


def test_dinov3_rope_vit_exports_dynamic_sizes(tmp_path):
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="needs float32 RoPE tables; this model computes them in bf16"):
        export_onnx(dinofeat.load({**V3, "pos_embed_rope_dtype": "bf16"}, device="cpu"), tmp_path / "b.onnx")
    assert not list(tmp_path.iterdir())
    model = dinofeat.load({**V3, "pos_embed_rope_dtype": "fp32"}, device="cpu")
    model.preprocess = PreprocessConfig(resize=73, crop=64)
    outputs = ("cls", "patches", "attention")
    result = export_onnx(model, tmp_path / "v3.onnx", dynamic=True, outputs=outputs)
    assert max(result.differences.values()) <= 1e-4
    images = torch.randn(2, 3, 48, 80)  # a size never seen at export: RoPE is computed in the graph
    got = _run(result.path, images.numpy(), list(outputs))
    expected = {"cls": model.embed(images), "patches": model.patch_tokens(images),
                "attention": model.cls_attention(images)}
    for name in outputs:
        assert np.abs(got[name] - expected[name].numpy()).max() <= 1e-4, name


def test_dinov3_convnext_exports_cls_and_patches_and_refuses_attention(tmp_path):
    torch.manual_seed(0)
    model = dinofeat.load({"family": "dinov3_convnext", "depths": [1, 1, 1, 1], "dims": [8, 8, 16, 16]},
                          device="cpu")
    model.preprocess = PreprocessConfig(resize=73, crop=64)
    with pytest.raises(UnsupportedOutputError):
        export_onnx(model, tmp_path / "c.onnx", outputs=("cls", "attention"))
    result = export_onnx(model, tmp_path / "c.onnx", dynamic=True)
    assert max(result.differences.values()) <= 1e-4


def test_fixed_size_export_from_the_cli_writes_the_preprocessing(tmp_path, capsys):
    model_dir = save_tiny_model(tmp_path / "model")
    out = tmp_path / "fixed.onnx"
    argv = ["export-onnx", str(model_dir), "-o", str(out), "--size", "24", "40", "--outputs", "cls,attention",
            "--opset", "18"]
    assert main(argv) == 0
    assert "onnxruntime vs PyTorch at 24x40 and 24x40: max |diff| cls" in capsys.readouterr().err
    preprocess = json.loads((tmp_path / "fixed.preprocess.json").read_text())
    assert preprocess["input"] == {"name": "images", "layout": "NCHW", "dtype": "float32", "channels": "RGB",
                                   "height": 24, "width": 40, "dynamic_size": False, "multiple_of": 8}
    assert preprocess["mean"] == [0.485, 0.456, 0.406] and preprocess["outputs"] == ["cls", "attention"]
    assert preprocess["resize_rule"] == "resize to exactly 24x40 (bicubic), no crop"
    got = _run(out, np.zeros((2, 3, 24, 40), np.float32), ["cls", "attention"])
    assert got["cls"].shape == (2, 32) and got["attention"].shape == (2, 2, 3, 5)
    import onnx

    assert onnx.load(str(out)).opset_import[0].version == 18


def test_resnet_exports_cls_and_patches_and_refuses_attention(tmp_path, capsys):
    torch.manual_seed(0)
    model = dinofeat.load({"family": "resnet"}, device="cpu")
    model.preprocess = PreprocessConfig(resize=73, crop=64)
    with pytest.raises(UnsupportedOutputError, match="a ResNet has none"):
        export_onnx(model, tmp_path / "r.onnx", outputs=("cls", "attention"))
    assert not list(tmp_path.iterdir())
    result = export_onnx(model, tmp_path / "r.onnx", dynamic=True)
    assert result.checked_shapes == [(1, 3, 64, 64), (2, 3, 144, 32)]
    assert max(result.differences.values()) <= 1e-4


def test_half_precision_export_is_checked_with_its_own_tolerance(tmp_path):
    model = _tiny("dino_v1")
    images = torch.randn(2, 3, 32, 40)
    before = model.embed(images)
    result = export_onnx(model, tmp_path / "h.onnx", dynamic=True, half=True, outputs=("cls", "patches"))
    assert 0 < max(result.differences.values()) <= onnx_export.FP16_TOLERANCE
    assert json.loads(result.preprocess_path.read_text())["precision"] == "float16"
    got = _run(result.path, images.numpy(), ["cls"])["cls"]
    assert got.dtype == np.float32 and np.abs(got - before.numpy()).max() < onnx_export.FP16_TOLERANCE
    # The model is given back as it came (float32), not left in half precision.
    assert model.dtype == torch.float32 and torch.equal(model.embed(images), before)


def test_a_failed_check_names_the_difference_and_keeps_the_previous_file(tmp_path, monkeypatch):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"previous")
    monkeypatch.setattr(onnx_export, "FP32_TOLERANCE", 1e-12)
    message = (r"ONNX output 'cls' differs from PyTorch by \d.*\(> 1e-12\) on an input of shape "
               r"\(1, 3, 32, 32\)")
    with pytest.raises(OnnxCheckError, match=message):
        export_onnx(_tiny("dino_v1"), out, dynamic=True, outputs=("cls",))
    assert out.read_bytes() == b"previous" and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_bad_requests_are_clear_errors(tmp_path, capsys):
    model_dir = save_tiny_model(tmp_path / "model")
    for extra, message in [(["--outputs", "cls,tokens"], "unknown ONNX outputs ['tokens']"),
                           (["--size", "4", "40"], "smaller than one 8-pixel patch")]:
        assert main(["export-onnx", str(model_dir), "-o", str(tmp_path / "x.onnx"), *extra]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


NO_TORCH = """
import json, sys
import numpy as np
import onnxruntime
path, preprocess = sys.argv[1], json.load(open(sys.argv[2]))
session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
images = np.zeros((2, 3, 48, 64), np.float32)
outputs = session.run(preprocess["outputs"], {preprocess["input"]["name"]: images})
assert "torch" not in sys.modules, "torch was imported"
print(json.dumps([list(o.shape) for o in outputs]))
"""


def test_the_graph_runs_with_onnxruntime_and_numpy_only(tmp_path):
    result = export_onnx(_tiny("dinov2_registers"), tmp_path / "m.onnx", dynamic=True,
                         outputs=("cls", "patches", "attention"))
    ran = subprocess.run([sys.executable, "-c", NO_TORCH, str(result.path), str(result.preprocess_path)],
                         capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert json.loads(ran.stdout) == [[2, 32], [2, 3, 4, 32], [2, 2, 3, 4]]
