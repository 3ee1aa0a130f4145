"""Weighted k-NN: equality with the official eval_knn.py outputs and with a plain torch version."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from dinofeat.evaluation.knn import class_votes, count_hits, knn_classify, knn_votes


def _load(golden):
    with safe_open(str(golden / "knn.safetensors"), "pt") as f:
        return {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118


@pytest.mark.parametrize("k", [10, 20])
def test_matches_official_golden(golden, k):
    data = _load(golden)
    args = (data["train_features"], data["train_labels"], data["test_features"])
    result = knn_classify(*args, data["test_labels"], ks=(k,), temperature=0.07, num_classes=1000)
    assert result[k]["top1"] == data[f"k{k}_T0.07_top1"].item()
    assert result[k]["top5"] == data[f"k{k}_T0.07_top5"].item()
    details = knn_votes(*args, k=k, temperature=0.07, num_classes=10)
    assert torch.equal(details.neighbor_indices, data[f"k{k}_T0.07_neighbor_indices"])
    torch.testing.assert_close(details.votes, data[f"k{k}_T0.07_votes"], rtol=1e-5, atol=1e-4)


def test_several_k_in_one_call_equal_separate_calls(golden):
    data = _load(golden)
    args = (data["train_features"], data["train_labels"], data["test_features"], data["test_labels"])
    together = knn_classify(*args, ks=(20, 10), num_classes=1000)
    assert together == {10: knn_classify(*args, ks=(10,))[10], 20: knn_classify(*args, ks=(20,))[20]}
    assert json.loads(json.dumps(together))["20"]["top1"] == 75.0


def _torch_knn(train, train_labels, test, test_labels, k, temperature, num_classes):
    train = torch.nn.functional.normalize(train, dim=1)
    test = torch.nn.functional.normalize(test, dim=1)
    sims, idx = (test @ train.T).topk(k, dim=1)
    one_hot = torch.nn.functional.one_hot(train_labels[idx], num_classes).float()
    votes = (one_hot * (sims / temperature).exp().unsqueeze(-1)).sum(1)
    return idx, votes


def test_agrees_with_plain_torch_on_random_data():
    gen = torch.Generator().manual_seed(3)
    centers = torch.randn(7, 24, generator=gen)
    train_labels = torch.randint(0, 7, (600,), generator=gen)
    test_labels = torch.randint(0, 7, (150,), generator=gen)
    train = centers[train_labels] + 1.5 * torch.randn(600, 24, generator=gen)
    test = centers[test_labels] + 1.5 * torch.randn(150, 24, generator=gen)
    result = knn_classify(train, train_labels, test, test_labels, ks=(1, 3, 20), chunk_size=16)
    for k in (1, 3, 20):
        idx, votes = _torch_knn(train, train_labels, test, test_labels, k, 0.07, 7)
        details = knn_votes(train, train_labels, test, k=k)
        assert torch.equal(details.neighbor_indices, idx)
        torch.testing.assert_close(details.votes, votes, rtol=1e-5, atol=1e-5)
        top1 = 100.0 * (votes.argmax(1) == test_labels).sum().item() / 150
        assert result[k]["top1"] == pytest.approx(top1)
        assert result[k]["top5"] >= result[k]["top1"]


def test_zero_vote_class_never_counts_as_hit():
    votes = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 1.0]])
    labels = torch.tensor([2, 2])
    assert count_hits(votes, labels, 3) == 1  # sample 0: class 2 has no vote although it is "third"
    votes = class_votes(torch.tensor([[0.0, 0.07]]), torch.tensor([[1, 1]]), 3)
    assert votes[0, 1] == pytest.approx(1 + torch.e)


def test_approximate_index_runs_and_is_close():
    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(5, 16, generator=gen)
    labels = torch.randint(0, 5, (2000,), generator=gen)
    feats = centers[labels] + 0.5 * torch.randn(2000, 16, generator=gen)
    exact = knn_classify(feats[:1800], labels[:1800], feats[1800:], labels[1800:], ks=(20,))
    approx = knn_classify(feats[:1800], labels[:1800], feats[1800:], labels[1800:], ks=(20,),
                          index_spec="HNSW16", search_params="efSearch=64")
    assert abs(exact[20]["top1"] - approx[20]["top1"]) <= 2.0


@pytest.mark.parametrize("bad, message", [
    ({"ks": (0,)}, "between 1"), ({"ks": (10_000,)}, "between 1"), ({"temperature": 0.0}, "positive"),
    ({"num_classes": 2}, "num_classes"), ({"index_spec": "Nonsense12"}, "index spec"),
])
def test_bad_arguments(bad, message):
    train, labels = torch.randn(30, 4), torch.arange(30) % 3
    with pytest.raises(ValueError, match=message):
        knn_classify(train, labels, train[:5], labels[:5], **{"ks": (5,), **bad})


def test_dimension_mismatch():
    with pytest.raises(ValueError, match="dimension"):
        knn_classify(torch.randn(30, 4), torch.zeros(30, dtype=torch.long), torch.randn(5, 6),
                     torch.zeros(5, dtype=torch.long), ks=(5,))
