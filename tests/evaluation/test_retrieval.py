"""Revisited Oxford / Paris retrieval against the official code's outputs (../shared/golden/eval)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dinofeat.evaluation.retrieval import (
    check_gnd,
    compute_map,
    multiscale_embed,
    retrieval_ranks,
    revisited_map,
)
from tests.helpers.eval_golden import eval_golden, golden_model
from tests.helpers.evaluation import one_thread  # noqa: F401 (a fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_ranks_and_metrics_match_the_official_compute_map():
    tensors, meta, _ = eval_golden()
    db, queries = tensors["retrieval.db_features"], tensors["retrieval.query_features"]
    gnd = meta["retrieval"]["gnd"]
    assert torch.equal(retrieval_ranks(db, queries), tensors["retrieval.ranks"])
    result = revisited_map(db, queries, gnd, ks=meta["retrieval"]["ks"])
    for key in ("mapM", "mapH"):
        assert abs(result[key] - meta["retrieval"][key]) <= 1e-6
    for key in ("mprM", "mprH"):
        assert np.allclose(result[key], meta["retrieval"][key], atol=1e-6, rtol=0)
    for key in ("apsM", "apsH", "prsM", "prsH"):
        assert np.allclose(result[key], tensors[f"retrieval.{key}"].numpy(), atol=1e-6, rtol=0)


def test_junk_ranked_before_a_positive_is_taken_out():
    # Query 0: database order 0 (junk), 1 (positive), 2 (other), 3 (positive).
    ranks = np.array([[0], [1], [2], [3]])
    mean_ap, _, mpr, _ = compute_map(ranks, [[1, 3]], [[0]], ks=(1, 2))
    # Without junk the positives sit at 0 and 2: AP = (1 + 1)/2 * 1/2 + (1/2 + 2/3)/2 * 1/2.
    assert mean_ap == pytest.approx(0.5 + (0.5 + 2 / 3) / 4)
    assert mpr.tolist() == [1.0, 0.5]


def test_a_query_without_positives_is_left_out_of_the_mean():
    ranks = np.array([[0, 0], [1, 1]])
    mean_ap, aps, _, _ = compute_map(ranks, [[0], []], [[], []])
    assert mean_ap == 1.0 and np.isnan(aps[1])


def test_a_gnd_that_does_not_fit_the_database_is_refused_naming_the_file():
    gnd = [{"easy": [0], "hard": [7], "junk": []}]
    with pytest.raises(ValueError, match=r"gnd_x.pkl.*index 7.*5 images"):
        check_gnd(gnd, num_db=5, num_queries=1, source="gnd_x.pkl")
    with pytest.raises(ValueError, match="2 query images"):
        check_gnd(gnd, num_db=10, num_queries=2, source="gnd_x.pkl")
    with pytest.raises(ValueError, match="lacks the 'junk'"):
        check_gnd([{"easy": [], "hard": []}], num_db=3, num_queries=1)


def test_multiscale_descriptor_matches_the_official_multi_scale():
    tensors, _, _ = eval_golden()
    features = multiscale_embed(golden_model(), tensors["retrieval.multiscale_input"])
    assert (features - tensors["retrieval.multiscale_features"]).abs().max() <= 1e-5
