"""Copydays copy detection against the official code's outputs (../shared/golden/eval)."""

from __future__ import annotations

import pytest
import torch

from dinofeat.evaluation.copy_detection import (
    Whitening,
    copy_detection_map,
    copy_detection_search,
    copydays_blocks,
    descriptors,
    trapezoidal_ap,
)
from tests.helpers.eval_golden import eval_golden, golden_model
from tests.helpers.evaluation import one_thread  # noqa: F401 (a fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_cls_gem_descriptor_matches_the_official():
    tensors, _, _ = eval_golden()
    found = descriptors(golden_model(), tensors["copy.images"])
    assert (found - tensors["copy.descriptors"]).abs().max() <= 1e-5


def test_whitening_search_and_ap_match_the_official():
    tensors, meta, _ = eval_golden()
    whitening = Whitening.fit(tensors["copy.whitening_features"])
    normalise = torch.nn.functional.normalize
    database = normalise(whitening.apply(tensors["copy.database_raw"]), dim=1)
    queries = normalise(whitening.apply(tensors["copy.queries_raw"]), dim=1)
    golden_db, golden_queries = tensors["copy.database_whitened"], tensors["copy.queries_whitened"]
    # 300 whitening images span 300 of 384 dimensions: the other 84 eigenvalues are all raised to the
    # same floor, so any orthonormal basis of that subspace is as right as the official one (LAPACK
    # builds differ there). Those columns agree up to a rotation, which leaves every similarity unchanged.
    kept = tensors["copy.whitening_features"].shape[0]
    assert (database[:, :kept] - golden_db[:, :kept]).abs().max() <= 1e-5
    assert (queries[:, :kept] - golden_queries[:, :kept]).abs().max() <= 1e-5
    assert (queries @ database.T - golden_queries @ golden_db.T).abs().max() <= 1e-5
    similarities, indices = copy_detection_search(queries, database, top=20)
    assert torch.equal(indices, tensors["copy.top20_indices"])
    assert (similarities - tensors["copy.top20_similarities"]).abs().max() <= 1e-5
    mean_ap, aps = copy_detection_map(queries, database, meta["copy_detection"]["positives"])
    assert abs(mean_ap - meta["copy_detection"]["mAP"]) <= 1e-6
    assert (torch.tensor(aps, dtype=torch.float64) - tensors["copy.aps"]).abs().max() <= 1e-6


def test_trapezoidal_ap_by_hand():
    assert trapezoidal_ap([0], 1) == 1.0
    assert trapezoidal_ap([1], 1) == pytest.approx((0 + 0.5) / 2)
    # Two positives, one found at rank 0, the other beyond the list: half the recall.
    assert trapezoidal_ap([0], 2) == 0.5


def test_copydays_layout_positives(tmp_path):
    from PIL import Image

    for folder, names in (
        ("original", ["200000.jpg", "200100.jpg"]),
        ("strong", ["200001.jpg", "200002.jpg", "200101.jpg"]),
        ("jpegqual/50", ["200000.jpg", "200100.jpg"]),
        ("crops/10", ["200000.jpg"]),
    ):
        (tmp_path / folder).mkdir(parents=True)
        for name in names:
            Image.new("RGB", (8, 8)).save(tmp_path / folder / name)
    with pytest.raises(ValueError, match="crops/10 holds 1 images, expected one per original"):
        copydays_blocks(tmp_path)
    (tmp_path / "crops/10/200000.jpg").unlink()
    originals, blocks = copydays_blocks(tmp_path)
    assert [o.name for o in originals] == ["200000.jpg", "200100.jpg"]
    by_name = {b.name: b.positives for b in blocks}
    assert by_name == {"original": [[0], [1]], "strong": [[0], [0], [1]], "jpegqual/50": [[0], [1]]}
