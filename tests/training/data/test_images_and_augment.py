"""Data discovery, corrupt-image policy, per-sample seeding, augmentation shapes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from dinofeat.data.files import list_image_files, read_file_list
from dinofeat.training.data.augment import MultiCropAugmentation
from dinofeat.training.data.images import EpochSampler, ImageDataset
from dinofeat.utils.errors import ImageReadError
from tests.helpers.training import make_image_folder


def _aug() -> MultiCropAugmentation:
    return MultiCropAugmentation(32, 16, local_crops_number=3)


def test_augmentation_shapes_and_determinism() -> None:
    image = Image.new("RGB", (50, 40), (120, 30, 200))
    crops = _aug()(image)
    assert [tuple(c.shape) for c in crops] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 3


def test_crops_depend_only_on_seed_epoch_index(tmp_path: Path) -> None:
    paths = list_image_files(make_image_folder(tmp_path, n=4))
    dataset = ImageDataset(paths, _aug(), seed=3)
    a, _ = dataset[(1, 2)]
    torch.manual_seed(99)
    b, _ = dataset[(1, 2)]
    c, _ = dataset[(2, 2)]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])


def test_corrupt_images_are_skipped_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = make_image_folder(tmp_path, n=4)
    bad = root / "class0" / "broken.jpg"
    bad.write_bytes(b"not a jpeg at all")
    paths = list_image_files(root)
    dataset = ImageDataset(paths, _aug())
    index = paths.index(bad)
    crops, skipped = dataset[(0, index)]
    assert skipped == 1 and len(crops) == 5
    assert "broken.jpg" in caplog.text
    cached = ImageDataset(paths, _aug(), cache_size=20)
    assert len(cached) == len(paths) - 1 and cached.skipped == [str(bad)]
    assert min(cached.cache[0].shape[:2]) == 20  # type: ignore[index]


def test_no_readable_image_raises(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(b"junk")
    with pytest.raises(ImageReadError, match="could be read"):
        ImageDataset([tmp_path / "x.png"], _aug(), cache_size=16)


def test_file_list_and_missing_folder(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "imgs", n=2)
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(str(p.relative_to(tmp_path)) for p in list_image_files(root)) + "\n")
    assert read_file_list(listing) == list_image_files(root)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_image_files(tmp_path / "nowhere")


def test_sampler_shards_one_permutation() -> None:
    data = list(range(8))
    single = EpochSampler(data, num_replicas=1, rank=0, seed=5)
    ranks = [EpochSampler(data, num_replicas=2, rank=r, seed=5) for r in range(2)]
    for s in (single, *ranks):
        s.set_epoch(3)
    order = [i for _, i in single]
    assert [i for _, i in ranks[0]] == order[0::2] and [i for _, i in ranks[1]] == order[1::2]
    assert {e for e, _ in single} == {3}
