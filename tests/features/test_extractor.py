"""Extractor: golden attention masks and preprocessing, upsampling, dtypes, bad inputs, the whole zoo."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import dinofeat
from dinofeat.config.preprocess import PreprocessConfig
from dinofeat.data.files import open_image
from dinofeat.data.inputs import iter_batches
from dinofeat.data.preprocess import pil_geometry, to_normalized_tensor
from dinofeat.features.masks import attention_masks
from dinofeat.hub.format import HubConfig, save_pretrained
from dinofeat.models import build_backbone
from dinofeat.models.vit.config import ViTConfig
from tests.helpers.common import TINY_VIT

PHOTOS = ["astronaut.png", "chelsea.png", "camera.png", "horse.png", "hubble_deep_field.jpg"]


def test_masks_from_stored_maps_equal_official(golden):
    ref = load_file(str(golden / "attention_masks.safetensors"))
    masks = attention_masks(ref["attn_maps"], threshold=0.6)
    assert masks.dtype == torch.bool
    assert torch.equal(masks.to(torch.uint8), ref["masks_th0.6"])
    assert masks.sum(dim=(1, 2)).tolist() == [2118, 2005, 2002]


def test_attention_and_masks_end_to_end_from_pixels(golden, tmp_path):
    ref = load_file(str(golden / "attention_masks.safetensors"))
    backbone = build_backbone(ViTConfig(patch_size=8, embed_dim=192, depth=4, num_heads=3)).eval()
    backbone.load_state_dict(load_file(str(golden / "vit_p8_d192.safetensors")), strict=True)
    save_pretrained(backbone, tmp_path, HubConfig(arch=backbone.config))
    model = dinofeat.load(tmp_path, device="cpu")
    pixels = torch.from_numpy(ref["img_resized_uint8"].numpy()).permute(2, 0, 1)
    x = to_normalized_tensor(pixels, PreprocessConfig()).unsqueeze(0)
    attn = model.cls_attention(x)
    assert attn.shape == (1, 3, 60, 60)
    assert (attn[0] - ref["attn_maps"]).abs().max() <= 1e-5
    assert (attn[0].flatten(1) - ref["attn_cls"][:, 1:]).abs().max() <= 1e-5
    assert torch.equal(attention_masks(attn[0]).to(torch.uint8), ref["masks_th0.6"])
    up = model.cls_attention(x, upsample=True)
    assert up.shape == (1, 3, 480, 480)
    assert torch.equal(up[0, :, ::8, ::8], attn[0]) and torch.equal(up[0, :, 7::8, 7::8], attn[0])


@pytest.mark.parametrize("name", PHOTOS)
def test_preprocessing_matches_official_crops(golden, photos, name):
    ref = load_file(str(golden / "preprocess.safetensors"))
    stem = name.rsplit(".", 1)[0]
    expected = ref[f"{stem}_crop_uint8"]
    crop = pil_geometry(PreprocessConfig())(open_image(photos / name))
    assert np.array_equal(np.asarray(crop), expected.numpy())
    batch = next(iter_batches([photos / name], PreprocessConfig(), None, 8))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    official = (expected.permute(2, 0, 1).float() / 255.0 - mean) / std
    assert torch.equal(batch[0], official)


@pytest.fixture(scope="module")
def tiny():
    return dinofeat.load(TINY_VIT, device="cpu")


def test_all_input_kinds_agree(tiny, tmp_path):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    image.save(tmp_path / "a.png")
    array = np.array(image)
    chw = torch.from_numpy(array).permute(2, 0, 1)
    feats = [tiny.embed(x, size=32) for x in (image, tmp_path / "a.png", str(tmp_path), array, chw,
                                               chw.unsqueeze(0), [image, array])]
    for other in feats[1:]:
        assert torch.equal(other[:1], feats[0])
    assert feats[-1].shape == (2, 32)


def test_progress_bar_and_batching_give_the_same_features(tiny, capsys):
    x = torch.randn(10, 3, 32, 32)
    with_bar = tiny.embed(x, batch_size=2, progress=True)
    assert "batch" in capsys.readouterr().err
    assert torch.allclose(with_bar, tiny.embed(x, batch_size=10), atol=1e-6)


def test_bf16_weights_give_float32_outputs(tmp_path):
    model = dinofeat.load(TINY_VIT, device="cpu")
    x = torch.randn(2, 3, 32, 32)
    reference = model.embed(x)
    low = model.to(dtype=torch.bfloat16)
    out = low.embed(x)
    assert out.dtype == torch.float32 and low.dtype == torch.bfloat16
    assert (out - reference).abs().max() < 0.1
    assert low.cls_attention(x).dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_on_gpu(dtype):
    model = dinofeat.load(TINY_VIT, device="cuda", dtype=dtype)
    x = torch.randn(2, 3, 32, 32)
    out = model.embed(x)
    assert out.dtype == torch.float32 and out.device.type == "cuda"
    reference = dinofeat.load(TINY_VIT, device="cpu")
    reference.load_state_dict(model.float().cpu().state_dict())
    assert (out.cpu() - reference.embed(x)).abs().max() < 0.1


def test_corrupt_image_file_is_named(tiny, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 this is not a jpeg")
    with pytest.raises(dinofeat.ImageReadError, match=r"broken\.jpg"):
        tiny.embed([bad])
    with pytest.raises(dinofeat.ImageReadError, match=r"missing\.png"):
        tiny.embed(tmp_path / "missing.png")


@pytest.mark.parametrize(("images", "error", "match"), [
    (torch.zeros(2, 4, 32, 32), ValueError, r"\(N, 3, H, W\)"),
    (torch.zeros(4, 32, 32), ValueError, r"got \(4, 32, 32\)"),
    (torch.zeros(5, 32, 32, dtype=torch.uint8), ValueError, r"\(3, H, W\)"),
    (torch.zeros(1, 3, 32, 32, dtype=torch.int32), TypeError, "int32"),
    (np.zeros((32, 32, 3), dtype=np.float32), TypeError, "float32"),
    (object(), TypeError, "object"),
    ([], ValueError, "empty"),
])
def test_bad_inputs_get_specific_errors(tiny, images, error, match):
    with pytest.raises(error, match=match):
        tiny.embed(images)


def test_size_with_a_preprocessed_tensor_is_refused(tiny):
    with pytest.raises(ValueError, match="already preprocessed"):
        tiny.embed(torch.zeros(1, 3, 32, 32), size=(64, 64))


def test_non_positive_batch_size_is_a_clear_error(tiny):
    with pytest.raises(ValueError, match="batch_size must be positive, got 0"):
        tiny.embed(torch.zeros(1, 3, 32, 32), batch_size=0)


def test_cls_attention_on_resnet_is_a_clear_error():
    model = dinofeat.load("resnet50", pretrained=False, device="cpu")
    with pytest.raises(TypeError, match="resnet50 is a CNN"):
        model.cls_attention(torch.randn(1, 3, 64, 64))
    assert model.embed(torch.randn(1, 3, 64, 64)).shape == (1, 2048)
    assert model.patch_tokens(torch.randn(1, 3, 64, 64)).shape == (1, 2, 2, 2048)


def _zoo_param(spec):
    """ViT-L and larger are slow; the 7B ones (27 GB in float32) are built on the meta device elsewhere."""
    params = spec.params_millions or 0
    if params > 2000:
        return pytest.param(spec.name, marks=pytest.mark.skip(reason=(
            "float32 weights beyond this machine's memory (test_dinov3_zoo builds it on the meta device)")))
    return pytest.param(spec.name, marks=pytest.mark.slow) if params > 250 else spec.name


@pytest.mark.parametrize("name", [_zoo_param(spec) for spec in dinofeat.list_models()])
def test_every_zoo_entry_builds_and_runs(name):
    spec = dinofeat.get_spec(name)
    model = dinofeat.load(name, pretrained=False, device="cpu")
    patch = spec.patch_size or 32
    x = torch.randn(1, 3, 2 * patch, 3 * patch)
    feats = model.embed(x)
    assert feats.shape == (1, spec.embed_dim) and torch.isfinite(feats).all()
    if spec.patch_size is not None:
        heads = model.backbone.config.num_heads
        attn = model.cls_attention(x)
        assert attn.shape == (1, heads, 2, 3)
        assert (attn.sum(dim=(2, 3)) <= 1 + 1e-5).all()


def test_every_family_answers_the_token_interface():
    from dinofeat.models import TokenBackbone

    resnet = dinofeat.load("resnet50", pretrained=False, device="cpu")
    vit = dinofeat.load("dinov2_vits14_reg", pretrained=False, device="cpu")
    x = torch.randn(1, 3, 64, 96)
    for model in (resnet, vit):
        assert isinstance(model.backbone, TokenBackbone)
    with torch.no_grad():
        out = resnet.backbone.forward_tokens(x)
        assert torch.equal(out.patch_grid(), resnet.backbone.feature_map(x).permute(0, 2, 3, 1))
        assert torch.equal(out.cls, resnet.backbone(x))
        assert out.registers.shape == (1, 0, 2048)
        reg = vit.backbone.forward_tokens(torch.randn(1, 3, 56, 70))
    assert reg.registers.shape == (1, 4, 384) and reg.grid == (4, 5)
    assert torch.equal(reg.patch_grid().reshape(1, 20, 384), reg.patches)
