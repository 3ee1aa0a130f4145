"""Band files (every loader format, band-count errors), per-band normalisation, and C-band models in
the library: embed / patch_tokens / cls_attention on band files, arrays and tensors; RGB input refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

import dinofeat
from dinofeat.config.preprocess import BandNormalization, PreprocessConfig
from dinofeat.data.bands import BandFileError, list_band_files, read_bands
from dinofeat.features.extractor import FeatureExtractor
from dinofeat.hub.format import HubConfig, save_pretrained
from dinofeat.models import build_backbone
from dinofeat.models.vit.config import ViTConfig

CHW = np.arange(5 * 6 * 7, dtype=np.uint16).reshape(5, 6, 7)


@pytest.mark.parametrize(("name", "write"), [
    ("chw.npy", lambda p: np.save(p, CHW)),
    ("hwc.npy", lambda p: np.save(p, np.moveaxis(CHW, 0, -1).astype(np.float64))),
    ("one.npz", lambda p: np.savez(p, bands=CHW)),
    ("named.npz", lambda p: np.savez(p, image=CHW, mask=np.zeros(3))),
    ("pages.tif", lambda p: tifffile.imwrite(p, CHW)),  # 5 pages of (6, 7)
    ("channels.tiff", lambda p: tifffile.imwrite(p, np.moveaxis(CHW, 0, -1), photometric="minisblack",
                                                 planarconfig="contig")),
])
def test_every_format_reads_as_float32_chw(tmp_path: Path, name: str, write) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / name
    write(path)
    bands = read_bands(path, channels=5)
    assert bands.dtype == np.float32 and bands.shape == (5, 6, 7)
    np.testing.assert_array_equal(bands, CHW.astype(np.float32))


def test_band_count_and_layout_errors_name_the_file(tmp_path: Path) -> None:
    np.save(tmp_path / "four.npy", CHW[:4])
    with pytest.raises(BandFileError, match=r"four\.npy has shape \(4, 6, 7\); expected .* C = 5 bands"):
        read_bands(tmp_path / "four.npy", channels=5)
    np.save(tmp_path / "hwc.npy", np.moveaxis(CHW, 0, -1))
    with pytest.raises(BandFileError, match=r"expected \(C, H, W\) with C = 5"):
        read_bands(tmp_path / "hwc.npy", channels=5, layout="chw")
    np.savez(tmp_path / "two.npz", a=CHW, b=CHW)
    with pytest.raises(BandFileError, match=r"holds arrays \['a', 'b'\]; store one array, or name it"):
        read_bands(tmp_path / "two.npz", channels=5)
    (tmp_path / "broken.npy").write_bytes(b"not numpy")
    with pytest.raises(BandFileError, match=r"cannot read band file .*broken\.npy"):
        read_bands(tmp_path / "broken.npy", channels=5)
    with pytest.raises(BandFileError, match="band file not found"):
        read_bands(tmp_path / "missing.npy", channels=5)
    assert [p.name for p in list_band_files(tmp_path)] == ["broken.npy", "four.npy", "hwc.npy", "two.npz"]


def test_normalization_clip_stretch_standardise() -> None:
    norm = BandNormalization(2, mean=(0.0, 1.0), std=(1.0, 2.0), clip_low=(-1.0, 0.0), clip_high=(1.0, 10.0),
                             stretch="arcsinh", arcsinh_scale=2.0)
    x = torch.tensor([[[5.0]], [[-3.0]]])
    expected = torch.tensor([np.arcsinh(1 / 2), (np.arcsinh(0.0) - 1) / 2], dtype=torch.float32)
    torch.testing.assert_close(norm.apply(x).flatten(), expected)
    with pytest.raises(ValueError, match="mean has 1 values for 2 bands"):
        BandNormalization(2, mean=(0.0,))
    config = PreprocessConfig(resize=9, crop=8, bands=norm)
    assert PreprocessConfig.from_dict(config.to_dict()) == config
    assert "bands" not in PreprocessConfig().to_dict()  # RGB configs keep their published form


def _band_model(tmp_path: Path) -> tuple[Path, FeatureExtractor]:
    torch.manual_seed(0)
    arch = ViTConfig(patch_size=4, embed_dim=16, depth=1, num_heads=2, img_size=8, in_chans=5)
    norm = BandNormalization(5, mean=(1.0, 2.0, 3.0, 4.0, 5.0), std=(2.0,) * 5, stretch="arcsinh")
    preprocess = PreprocessConfig(resize=9, crop=8, bands=norm)
    config = HubConfig(arch=arch, preprocess=preprocess)
    folder = save_pretrained(build_backbone(arch), tmp_path / "model", config)
    return folder, dinofeat.load(folder, device="cpu")


def test_band_model_takes_files_arrays_and_tensors_with_its_normalisation(tmp_path: Path) -> None:
    _, model = _band_model(tmp_path)
    rng = np.random.default_rng(0)
    arrays = rng.normal(3, 4, (3, 5, 9, 9)).astype(np.float32)
    data = tmp_path / "bands"
    data.mkdir()
    for i, array in enumerate(arrays):
        np.save(data / f"b{i}.npy", array if i != 1 else np.moveaxis(array, 0, -1))  # one (H, W, C) file
    from_files = model.embed(data)
    from_arrays = model.embed(arrays)
    from_tensor = model.embed(torch.from_numpy(arrays))
    torch.testing.assert_close(from_files, from_arrays)
    torch.testing.assert_close(from_tensor, from_arrays)
    # By hand: stretch, bicubic resize 9 -> 9 (identity), centre crop 8, standardise, backbone.
    norm = model.preprocess.bands
    assert norm is not None
    by_hand = norm.standardized(norm.stretched(torch.from_numpy(arrays))[:, :, :8, :8])
    torch.testing.assert_close(from_arrays, model.backbone(by_hand), atol=1e-5, rtol=0)
    assert model.patch_tokens(arrays).shape == (3, 2, 2, 16)
    assert model.cls_attention(data / "b0.npy").shape == (1, 2, 2, 2)


def test_rgb_input_to_band_model_and_bands_to_rgb_model_are_errors(tmp_path: Path) -> None:
    _, model = _band_model(tmp_path)
    Image.new("RGB", (9, 9)).save(tmp_path / "photo.png")
    with pytest.raises(TypeError, match=r"photo\.png is an image file; this model takes 5-band arrays"):
        model.embed(tmp_path / "photo.png")
    with pytest.raises(TypeError, match="takes 5-band arrays, tensors or band files, not RGB images"):
        model.embed(Image.new("RGB", (9, 9)))
    with pytest.raises(ValueError, match=r"shape \(3, 9, 9\); this model takes \(5, H, W\) bands"):
        model.embed(torch.zeros(1, 3, 9, 9))
    rgb = dinofeat.load({"patch_size": 4, "embed_dim": 16, "depth": 1, "num_heads": 2, "img_size": 8},
                        device="cpu")
    with pytest.raises(ValueError, match=r"preprocessed batch \(N, 3, H, W\) .* got \(1, 5, 8, 8\)"):
        rgb.embed(torch.zeros(1, 5, 8, 8))
    with pytest.raises(ValueError, match=r"expected images of shape \(N, 5, H, W\), got \(1, 3, 8, 8\)"):
        model.backbone(torch.zeros(1, 3, 8, 8))
