"""The linear segmentation probe learns a synthetic task, and refuses bad masks naming the file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import dinofeat
from dinofeat.evaluation.segmentation_probe import (
    SegProbeConfig,
    confusion_matrix,
    load_masks,
    mean_iou,
    patch_feature_fn,
    scan_segmentation_folder,
    train_seg_probe,
)
from dinofeat.features.image_files import extract_features
from tests.helpers.common import TINY_VIT
from tests.helpers.evaluation import one_thread  # noqa: F401 (a fixture)
from tests.helpers.segmentation import make_shapes_split


def _features(model, root, blocks):
    split = scan_segmentation_folder(root)
    features = extract_features(
        model,
        split.images,
        feature_fn=patch_feature_fn(model, blocks),
        size=(64, 64),
        num_workers=0,
        progress=False,
    )
    return features, load_masks(split, 64, num_classes=4)


@pytest.mark.parametrize("blocks, batchnorm", [(1, True), (2, False)])
@pytest.mark.usefixtures("one_thread")
def test_probe_learns_shapes_whose_class_is_their_colour(tmp_path, blocks, batchnorm):
    make_shapes_split(tmp_path / "train", 16, seed=0)
    make_shapes_split(tmp_path / "val", 6, seed=1, layout="voc")
    model = dinofeat.load(TINY_VIT, device="cpu")
    train, train_masks = _features(model, tmp_path / "train", blocks)
    val, val_masks = _features(model, tmp_path / "val", blocks)
    assert train.shape == (16, 8 * 8 * 32 * blocks)
    config = SegProbeConfig(n_last_blocks=blocks, batchnorm=batchnorm, image_size=64, epochs=15, lr=2e-2)
    result = train_seg_probe(train, train_masks, val, val_masks, (8, 8), 4, config)
    first, last = result["history"][0], result["history"][-1]
    assert last["train_loss"] < first["train_loss"]
    assert result["final"]["mIoU"] >= 0.85, result["final"]


def test_mean_iou_by_hand():
    predicted = torch.tensor([[0, 0], [1, 1]])
    target = torch.tensor([[0, 1], [1, 255]])
    confusion = confusion_matrix(predicted, target, 2)
    assert confusion.tolist() == [[1, 0], [1, 1]]
    miou, ious = mean_iou(confusion)
    assert ious == [0.5, 0.5] and miou == 0.5
    assert np.isnan(mean_iou(torch.tensor([[2, 0, 0], [0, 0, 0], [0, 0, 1]]))[1][1])


def test_mask_of_the_wrong_size_is_refused_naming_it(tmp_path):
    make_shapes_split(tmp_path, 2)
    Image.new("L", (10, 10)).save(tmp_path / "annotations" / "img_001.png")
    with pytest.raises(ValueError, match=r"img_001.png is 10x10 but its image img_001.png is 64x64"):
        load_masks(scan_segmentation_folder(tmp_path), 64, num_classes=4)


def test_label_beyond_the_classes_is_refused_naming_the_file(tmp_path):
    make_shapes_split(tmp_path, 2)
    with pytest.raises(ValueError, match=r"img_000.png has label 3, beyond the 3 classes"):
        load_masks(scan_segmentation_folder(tmp_path), 64, num_classes=3)
    # 255 is ignored, not an error; ADE20K's reduce_zero_label makes 0 ignored.
    masks = load_masks(scan_segmentation_folder(tmp_path), 64, num_classes=3, reduce_zero_label=True)
    assert set(torch.unique(masks).tolist()) <= {0, 1, 2, 255}


def test_image_without_mask_is_named(tmp_path):
    make_shapes_split(tmp_path, 2)
    (tmp_path / "annotations" / "img_000.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"img_000\.png"):
        scan_segmentation_folder(tmp_path)
