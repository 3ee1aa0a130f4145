"""The augmentation's faster paths give torchvision's pixels exactly: hue tables, uint8 hand-over."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms
from torchvision.transforms import functional as TF

from dinofeat.config.preprocess import IMAGENET_MEAN, IMAGENET_STD
from dinofeat.data.files import list_image_files
from dinofeat.training.config.train_config import resolve_config
from dinofeat.training.data import hue
from dinofeat.training.data.augment import ColorJitter, MultiCropAugmentation, normalize_crops, pil_to_uint8
from dinofeat.training.data.images import ImageDataset, collate_crops
from dinofeat.training.engine.trainer import Trainer
from tests.helpers.training import TINY_TRAIN_OVERRIDES, make_image_folder


@pytest.fixture(scope="module")
def tables() -> tuple[np.ndarray, np.ndarray]:
    return hue.build_tables()


def _every_colour() -> Image.Image:
    colours = np.arange(hue.N_COLOURS, dtype="<u4").tobytes()
    return Image.frombytes("RGB", (4096, 4096), colours, "raw", "RGBX")


@pytest.mark.parametrize("factor", [-0.5, -0.1, 0.0, 0.0039, 0.5])
def test_hue_tables_shift_every_colour_as_torchvision(tables: object, factor: float) -> None:
    image = _every_colour()
    assert hue.adjust_hue(image, factor).tobytes() == TF.adjust_hue(image, factor).tobytes()


def test_tables_are_built_once_their_cost_in_pixels_is_spent(
        monkeypatch: pytest.MonkeyPatch, tables: tuple[np.ndarray, np.ndarray]) -> None:
    monkeypatch.setattr(hue, "_tables", None)
    monkeypatch.setattr(hue, "_pixels_shifted_by_pil", 0)
    monkeypatch.setattr(hue, "BUILD_AFTER_PIXELS", 100)
    built: list[int] = []

    def build() -> tuple[np.ndarray, np.ndarray]:
        built.append(1)
        return tables

    monkeypatch.setattr(hue, "build_tables", build)
    image = Image.new("RGB", (8, 8), (10, 200, 30))
    expected = TF.adjust_hue(image, 0.3).tobytes()
    assert hue.adjust_hue(image, 0.3).tobytes() == expected  # 64 pixels through PIL
    assert hue.adjust_hue(image, 0.3).tobytes() == expected  # 128 >= 100
    assert not built
    assert hue.adjust_hue(image, 0.3).tobytes() == expected
    assert built == [1]


def test_hue_other_modes_and_bad_factor(tables: object) -> None:
    rgba = Image.new("RGBA", (5, 3), (10, 200, 30, 90))
    grey = Image.new("L", (5, 3), 77)
    for image in (rgba, grey):
        assert hue.adjust_hue(image, 0.2).tobytes() == TF.adjust_hue(image, 0.2).tobytes()
    with pytest.raises(ValueError, match=r"hue_factor \(0.6\) is not in \[-0.5, 0.5\]"):
        hue.adjust_hue(rgba, 0.6)


def test_color_jitter_draws_and_pixels_are_torchvision_s(tables: object) -> None:
    rng = np.random.default_rng(0)
    ours, theirs = ColorJitter(0.4, 0.4, 0.2, 0.1), transforms.ColorJitter(0.4, 0.4, 0.2, 0.1)
    for seed in range(40):
        image = Image.fromarray(rng.integers(0, 256, (24, 31, 3), dtype=np.uint8))
        torch.manual_seed(seed)
        a = ours(image)
        after_ours = torch.rand(1)
        torch.manual_seed(seed)
        b = theirs(image)
        assert a.tobytes() == b.tobytes() and torch.equal(after_ours, torch.rand(1))


@pytest.mark.parametrize(("height", "width", "batch"), [(17, 13, 5), (1, 1, 3), (32, 32, 4)])
def test_batched_normalisation_equals_to_tensor_normalize(height: int, width: int, batch: int) -> None:
    rng = np.random.default_rng(height)
    images = [Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)) for _ in range(batch)]
    reference = transforms.Compose([transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    expected = torch.stack([reference(image) for image in images])
    uint8, already_float = torch.stack([pil_to_uint8(image) for image in images]), expected.clone()
    out = normalize_crops([uint8, already_float])
    assert torch.equal(out[0], expected) and out[0].is_contiguous()
    assert torch.equal(out[1], expected)  # float crops are only moved


def test_uint8_crops_from_the_dataset_equal_the_float_pipeline(tmp_path: Path, tables: object) -> None:
    paths = list_image_files(make_image_folder(tmp_path, n=4, size=(70, 50)))
    as_float = ImageDataset(paths, MultiCropAugmentation(32, 16, local_crops_number=3), seed=5)
    as_uint8 = ImageDataset(paths, MultiCropAugmentation(32, 16, local_crops_number=3, as_uint8=True), seed=5)
    keys = [(1, i) for i in range(4)]
    expected, _ = collate_crops([as_float[key] for key in keys])
    got, _ = collate_crops([as_uint8[key] for key in keys])
    assert all(crop.dtype == torch.uint8 for crop in got)
    assert all(torch.equal(a, b) for a, b in zip(normalize_crops(got), expected, strict=True))


def test_a_training_run_builds_the_tables_up_front_when_it_will_use_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[int] = []
    monkeypatch.setattr(hue, "build_tables", lambda: built.append(1))
    data = make_image_folder(tmp_path / "data", n=8)

    def trainer(name: str) -> None:
        Trainer(resolve_config(overrides=[*TINY_TRAIN_OVERRIDES, f"data.path={data}",
                                          f"run.output_dir={tmp_path / name}"]))

    trainer("short")  # 2 epochs x 2 iterations x 4 images x (2 x 32^2 + 2 x 16^2) pixels: not worth it
    assert not built
    monkeypatch.setattr(hue, "BUILD_AFTER_PIXELS", 10_000)
    trainer("long")
    assert built == [1]
