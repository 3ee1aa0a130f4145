"""Training on band files: skip-and-count of files with another band count, the band augmentations'
seeding, resume exactness with them, `dinofeat-train stats`, and the export loading as a C-band model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import dinofeat
from dinofeat.config.preprocess import BandNormalization
from dinofeat.training.cli import main
from dinofeat.training.config.train_config import BandsConfig, resolve_config
from dinofeat.training.data.band_augment import BandMultiCrop
from dinofeat.training.engine.export import export_teacher
from dinofeat.training.engine.trainer import Trainer, _check_same_network
from tests.helpers.training import BAND_OVERRIDES, TINY_TRAIN_OVERRIDES, make_band_folder


def _config(data: Path, out: Path, *extra: str):  # type: ignore[no-untyped-def]
    return resolve_config(overrides=[*TINY_TRAIN_OVERRIDES, f"data.path={data}", f"run.output_dir={out}",
                                     *BAND_OVERRIDES, *extra])


def test_band_crops_depend_only_on_the_seed_and_respect_the_settings() -> None:
    norm = BandNormalization(5, mean=(0.0,) * 5, std=(1.0,) * 5)
    image = torch.rand(5, 40, 40)
    aug = BandMultiCrop(32, 16, (0.4, 1.0), (0.1, 0.4), 2, BandsConfig(rot90=True), norm)
    torch.manual_seed(7)
    first = aug(image)
    torch.manual_seed(7)
    again = aug(image)
    assert [tuple(c.shape) for c in first] == [(5, 32, 32)] * 2 + [(5, 16, 16)] * 2
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    plain = BandsConfig(vflip=False, intensity_p=0.0, noise_p=0.0, blur_p=0.0)
    whole = BandMultiCrop(40, 16, (1.0, 1.0), (0.1, 0.4), 0, plain, norm)
    crops = whole(image)  # the full-area crop keeps the pixels (up to a horizontal flip)
    assert any(torch.allclose(c, image, atol=1e-5) or torch.allclose(c, image.flip(-1), atol=1e-5)
               for c in crops)
    with pytest.raises(ValueError, match=r"expected \(5, H, W\) bands, got \(3, 40, 40\)"):
        aug(torch.rand(3, 40, 40))


def test_mismatched_band_file_is_skipped_and_counted(tmp_path: Path) -> None:
    data = make_band_folder(tmp_path / "bands")
    trainer = Trainer(_config(data, tmp_path / "run", "data.cache_size=1"))
    assert trainer.dataset.skipped == [str(data / "four_bands.npy")]
    assert len(trainer.dataset) == 8
    uncached = Trainer(_config(data, tmp_path / "run2", "run.epochs=1"))
    summary = uncached.fit()  # read when used: replaced by the next readable file, counted
    assert summary["skipped_images"] == 1


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    state = {f"s.{k}": v for k, v in trainer.student_module.state_dict().items()}
    state.update({f"t.{k}": v for k, v in trainer.teacher.state_dict().items()})
    return state


def test_resume_with_band_augmentations_equals_uninterrupted(tmp_path: Path) -> None:
    data = make_band_folder(tmp_path / "bands")
    (data / "four_bands.npy").unlink()
    full = Trainer(_config(data, tmp_path / "full", "data.cache_size=1"))
    full.fit()
    part = Trainer(_config(data, tmp_path / "part", "data.cache_size=1"))
    part.train_one_epoch(0)
    part.save_checkpoint(1)
    torch.manual_seed(1234)
    resumed = Trainer(_config(data, tmp_path / "part", "data.cache_size=1"))
    assert resumed.start_epoch == 1
    resumed.fit()
    expected, got = _weights(full), _weights(resumed)
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    saved = resumed.cfg.to_dict()
    with pytest.raises(ValueError, match=r"data.channels: 5 there, 4 now"):
        _check_same_network(saved, {**saved, "data": {**saved["data"], "channels": 4}}, "ckpt")


def test_stats_command_writes_per_band_statistics_into_a_config(tmp_path: Path) -> None:
    data = make_band_folder(tmp_path / "bands")
    out = tmp_path / "run.json"
    out.write_text(json.dumps({"optim": {"lr": 0.001}}))
    assert main(["stats", str(data), "--channels", "5", "--stretch", "arcsinh", "--arcsinh-scale", "2",
                 "--clip-percentiles", "1", "99", "-o", str(out)]) == 0
    written = json.loads(out.read_text())
    assert written["optim"] == {"lr": 0.001} and written["data"]["channels"] == 5
    from dinofeat.data.bands import read_bands
    from dinofeat.training.data.band_dataset import band_paths

    arrays = [read_bands(p, 5) for p in band_paths(str(data), None) if p.name != "four_bands.npy"]
    pixels = np.concatenate([a.reshape(5, -1) for a in arrays], axis=1).astype(np.float64)
    low, high = np.percentile(pixels, 1, axis=1), np.percentile(pixels, 99, axis=1)
    stretched = np.arcsinh(np.clip(pixels, low[:, None], high[:, None]) / 2)
    np.testing.assert_allclose(written["bands"]["mean"], stretched.mean(axis=1), rtol=1e-5)
    np.testing.assert_allclose(written["bands"]["std"], stretched.std(axis=1, ddof=1), rtol=1e-4)
    np.testing.assert_allclose(written["bands"]["clip_low"], low, rtol=1e-5)
    cfg = resolve_config(config_file=out)
    assert cfg.bands.stretch == "arcsinh" and len(cfg.bands.mean or []) == 5
    assert main(["stats", str(data), "--channels", "6", "-o", str(tmp_path / "x.json")]) == 2


def test_band_run_exports_a_model_that_embeds_band_files(tmp_path: Path) -> None:
    data = make_band_folder(tmp_path / "bands")
    trainer = Trainer(_config(data, tmp_path / "run", "run.epochs=1", "data.cache_size=1"))
    trainer.fit()
    folder = export_teacher(tmp_path / "run" / "checkpoint.pth", tmp_path / "exported")
    model = dinofeat.load(folder, device="cpu")
    assert model.backbone.config.in_chans == 5
    bands = model.preprocess.bands
    assert bands is not None and bands.mean == (1.0,) * 5 and bands.std == (2.0,) * 5
    features = model.embed(data / "b0.npy")
    raw = torch.from_numpy(np.load(data / "b0.npy"))
    assert features.shape == (1, 32)
    # The export's preprocessing by hand: resize 40 -> 37 px (bicubic), centre crop 32, standardise.
    resized = torch.nn.functional.interpolate(raw[None], size=(37, 37), mode="bicubic", antialias=True)
    trainer.teacher.backbone.eval()
    with torch.no_grad():
        direct = trainer.teacher.backbone(bands.apply(resized[:, :, 2:34, 2:34]))
    torch.testing.assert_close(features, direct, atol=1e-5, rtol=0)
