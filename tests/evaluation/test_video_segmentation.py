"""DAVIS label propagation and J / F against the official code and toolkit (../shared/golden/eval)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from dinofeat.evaluation.davis_metrics import boundary_f_measure, region_similarity
from dinofeat.evaluation.video_segmentation import (
    davis_j_and_f,
    davis_palette,
    propagate,
    read_frame,
    save_label_png,
)
from tests.helpers.common import shared_path
from tests.helpers.eval_golden import eval_golden, golden_model
from tests.helpers.evaluation import one_thread  # noqa: F401 (a fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_frame_preprocessing_matches_the_official_opencv_read_frame():
    tensors, _, folder = eval_golden()
    frame, size = read_frame(folder / "video" / "frames" / "00000.jpg")
    assert size == (120, 160)
    assert (frame - tensors["video.frame0_preprocessed"]).abs().max() <= 1e-5


def test_propagated_label_maps_equal_the_official_ones():
    tensors, _, folder = eval_golden()
    frames = sorted((folder / "video" / "frames").glob("*.jpg"))
    labels = propagate(golden_model(), frames, folder / "video" / "first_annotation.png")
    assert torch.equal(labels, tensors["video.propagated_labels"])
    official = np.stack(
        [np.array(Image.open(p)) for p in sorted((folder / "video/official/frames").glob("*.png"))]
    )
    assert np.array_equal(labels.numpy(), official)


def test_decoded_frames_give_the_same_labels_as_paths():
    tensors, _, folder = eval_golden()
    frames = [Image.open(p) for p in sorted((folder / "video" / "frames").glob("*.jpg"))[:2]]
    annotation = np.array(Image.open(folder / "video" / "first_annotation.png"))
    labels = propagate(golden_model(), frames, annotation)
    assert torch.equal(labels, tensors["video.propagated_labels"][:2])


def test_annotation_of_another_size_is_refused():
    _, _, folder = eval_golden()
    frames = sorted((folder / "video" / "frames").glob("*.jpg"))[:2]
    with pytest.raises(ValueError, match=r"annotation is 80x60 .* first frame .*00000\.jpg is 160x120"):
        propagate(golden_model(), frames, np.zeros((60, 80), dtype=np.int64))


def test_label_png_has_the_davis_palette(tmp_path):
    assert davis_palette()[:4].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    labels = np.array([[0, 1], [2, 1]])
    save_label_png(tmp_path / "x.png", labels)
    image = Image.open(tmp_path / "x.png")
    assert image.mode == "P" and np.array_equal(np.array(image), labels)


# ------------------------------------------------------------------ J and F
def test_j_and_f_on_shapes_worked_out_by_hand():
    gt = np.zeros((20, 20), dtype=bool)
    gt[5:15, 5:15] = True  # 100 pixels
    pred = np.zeros_like(gt)
    pred[5:15, 10:20] = True  # overlaps 50 of them
    assert region_similarity(gt, pred) == pytest.approx(50 / 150)
    assert region_similarity(gt, gt) == 1.0
    assert region_similarity(np.zeros_like(gt), np.zeros_like(gt)) == 1.0
    # Boundary tolerance ceil(0.008 * 28.3) = 1 pixel: a mask shifted by one pixel still scores F = 1,
    # one shifted by five loses the boundary columns that moved out of reach.
    shifted = np.roll(gt, 1, axis=1)
    assert boundary_f_measure(gt, shifted) == 1.0
    assert boundary_f_measure(gt, np.zeros_like(gt)) == 0.0
    assert boundary_f_measure(np.zeros_like(gt), np.zeros_like(gt)) == 1.0
    # Void pixels are ignored: hiding the disagreeing half makes the masks agree.
    void = np.zeros_like(gt)
    void[:, 10:] = True
    assert region_similarity(gt, pred | gt, void) == 1.0


def test_pair_and_sequence_metrics_match_the_davis_toolkit():
    folder = shared_path("golden", "eval")
    tensors = load_file(str(folder / "davis_metrics.safetensors"))
    meta = json.loads((folder / "davis_metrics.json").read_text())
    for number, expected in enumerate(meta["pairs"]):
        gt, pred = tensors[f"pair{number}.gt"].numpy(), tensors[f"pair{number}.pred"].numpy()
        assert abs(region_similarity(gt, pred) - expected["J"]) <= 1e-6, number
        assert abs(boundary_f_measure(gt, pred) - expected["F"]) <= 1e-6, number
    result = davis_j_and_f(tensors["sequence.pred_labels"].numpy(), tensors["sequence.gt_labels"].numpy())
    for key in ("J_mean", "F_mean", "J&F_mean"):
        assert abs(result[key] - meta["sequence"][key]) <= 1e-6
    for label, expected in meta["sequence"]["per_object"].items():
        assert np.allclose(result["per_object"][label]["J_per_frame"], expected["J_per_frame"], atol=1e-6)
        assert np.allclose(result["per_object"][label]["F_per_frame"], expected["F_per_frame"], atol=1e-6)


def test_a_prediction_with_an_unknown_object_is_refused():
    gt = np.zeros((3, 4, 4), dtype=np.int64)
    gt[:, 0, 0] = 1
    with pytest.raises(ValueError, match=r"label 2.*1 objects"):
        davis_j_and_f(gt * 2, gt)
