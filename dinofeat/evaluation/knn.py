"""Weighted k-NN classification of DINO features (the paper's k-NN protocol, ``eval_knn.py``).

Protocol: L2-normalise train and test features; for each test feature take the ``k`` train
features with the largest inner product (= cosine similarity); weight each neighbour's vote by
``exp(similarity / T)`` (T = 0.07); sum the weights per class. Top-1 counts the class with the
largest vote; "top-5" counts the first ``min(5, k)`` classes by vote.

Tie rule (documented difference from the official code, which leaves it to torch's unstable
sort): classes are ranked by vote with ties broken by the smaller class index, and a class that
received no vote never counts as a hit. When fewer than ``min(5, k)`` classes got votes, the
official code can count a zero-vote class as a top-5 hit by chance; on the golden data both
rules give identical numbers.

Several ``k`` are evaluated with ONE faiss search for the largest ``k`` (neighbours come sorted,
so the first ``k`` columns are the ``k``-NN).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from dinofeat.search.neighbors import DEFAULT_QUERY_CHUNK, EXACT_INDEX, build_index, l2_normalize, search

DEFAULT_KS = (10, 20, 100, 200)
DEFAULT_TEMPERATURE = 0.07
TOP5 = 5


@dataclass(frozen=True)
class KNNVotes:
    """Per-test-sample details for one ``k``: neighbours (descending similarity) and class votes."""

    neighbor_indices: torch.Tensor  # (n_test, k) int64 indices into the train set
    neighbor_similarities: torch.Tensor  # (n_test, k) float32
    votes: torch.Tensor  # (n_test, num_classes) float32


def _check_inputs(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                  ks: Sequence[int], temperature: float) -> None:
    if train_features.ndim != 2 or test_features.ndim != 2:
        raise ValueError(f"features must be 2-D, got train {tuple(train_features.shape)} "
                         f"and test {tuple(test_features.shape)}")
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(f"train features have dimension {train_features.shape[1]} but test features "
                         f"{test_features.shape[1]}")
    if train_labels.shape != (train_features.shape[0],):
        raise ValueError(f"train_labels must have shape ({train_features.shape[0]},), "
                         f"got {tuple(train_labels.shape)}")
    check_knn_settings(ks, temperature, train_features.shape[0])


def check_knn_settings(ks: Sequence[int], temperature: float, num_train: int | None = None) -> None:
    """ValueError unless every k is in [1, num_train] (when known) and the temperature is positive."""
    if not ks:
        raise ValueError("ks is empty: give at least one k")
    bad = [k for k in ks if int(k) < 1 or (num_train is not None and int(k) > num_train)]
    if bad:
        limit = ">= 1" if num_train is None else f"between 1 and the number of train samples {num_train}"
        raise ValueError(f"every k must be {limit}, got {bad}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")


def class_votes(neighbor_similarities: torch.Tensor, neighbor_labels: torch.Tensor, num_classes: int,
                temperature: float = DEFAULT_TEMPERATURE) -> torch.Tensor:
    """votes[i, c] = sum of exp(sim / T) over the neighbours of sample i with label c: (n, num_classes)."""
    weights = (neighbor_similarities.float() / temperature).exp()
    votes = torch.zeros(weights.shape[0], num_classes, dtype=weights.dtype)
    return votes.scatter_add_(1, neighbor_labels.long(), weights)


def count_hits(votes: torch.Tensor, labels: torch.Tensor, top: int) -> int:
    """Samples whose label is among the first ``top`` classes by vote and received a vote."""
    order = torch.sort(votes, dim=1, descending=True, stable=True).indices[:, :top]
    in_top = (order == labels.view(-1, 1)).any(dim=1)
    voted = votes.gather(1, labels.view(-1, 1)).squeeze(1) > 0
    return int((in_top & voted).sum())


def _chunked_votes(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                   ks: Sequence[int], temperature: float, num_classes: int, normalize: bool,
                   index_spec: str, search_params: str | None, chunk_size: int
                   ) -> Iterator[tuple[slice, dict[int, KNNVotes]]]:
    train = l2_normalize(train_features) if normalize else train_features.detach().float().cpu()
    index = build_index(train, index_spec, search_params)
    labels = train_labels.detach().long().cpu()
    k_max = max(ks)
    for start in range(0, test_features.shape[0], chunk_size):
        block = test_features[start:start + chunk_size]
        queries = l2_normalize(block) if normalize else block.detach().float().cpu()
        found = search(index, queries, k_max, chunk_size)
        if bool((found.indices < 0).any()):
            raise RuntimeError(f"the {index_spec!r} index returned fewer than {k_max} neighbours for some "
                               "queries; use a larger nprobe/efSearch or the exact 'Flat' index")
        neighbor_labels = labels[found.indices]
        per_k = {}
        for k in ks:
            sims, nbr = found.similarities[:, :k], found.indices[:, :k]
            votes = class_votes(sims, neighbor_labels[:, :k], num_classes, temperature)
            per_k[k] = KNNVotes(nbr, sims, votes)
        yield slice(start, start + block.shape[0]), per_k


def _num_classes(train_labels: torch.Tensor, test_labels: torch.Tensor | None,
                 num_classes: int | None) -> int:
    labels = [t for t in (train_labels, test_labels) if t is not None and t.numel()]
    needed = max(int(t.max()) + 1 for t in labels)
    if min(int(t.min()) for t in labels) < 0:
        raise ValueError("labels must be non-negative class indices")
    if num_classes is None:
        return needed
    if num_classes < needed:
        raise ValueError(f"num_classes={num_classes} but labels go up to {needed - 1}")
    return num_classes


def knn_classify(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 test_labels: torch.Tensor, ks: Sequence[int] = DEFAULT_KS,
                 temperature: float = DEFAULT_TEMPERATURE, num_classes: int | None = None, *,
                 normalize: bool = True, index_spec: str = EXACT_INDEX, search_params: str | None = None,
                 chunk_size: int = DEFAULT_QUERY_CHUNK) -> dict[int, dict[str, float]]:
    """Weighted k-NN accuracy of test features against train features, for several ``k`` at once.

    Args:
        train_features: (n_train, dim) features (any device/dtype; copied to float32 CPU for faiss).
        train_labels: (n_train,) int class indices.
        test_features: (n_test, dim).
        test_labels: (n_test,).
        ks: Numbers of neighbours; one search with ``max(ks)`` serves all of them.
        temperature: T in the vote weight exp(similarity / T).
        num_classes: Defaults to the largest label + 1 (the official default 1000 gives the same numbers).
        normalize: L2-normalise features first (the protocol); pass False if they already are.
        index_spec: ``"Flat"`` (exact, default) or a ``faiss.index_factory`` string for approximate search.
        search_params: faiss parameters for approximate indexes, e.g. ``"nprobe=64"``.
        chunk_size: Test samples per search chunk (bounds memory: votes are chunk x num_classes).

    Returns:
        ``{k: {"top1": percent, "top5": percent}}``; "top5" is top-min(5, k).

    Example:
        >>> train = torch.randn(200, 16); labels = torch.arange(200) % 4
        >>> result = knn_classify(train, labels, train[:20], labels[:20], ks=(1, 10))
        >>> result[1]["top1"]
        100.0
    """
    test_labels = test_labels.detach().long().cpu()
    _check_inputs(train_features, train_labels, test_features, ks, temperature)
    if test_labels.shape != (test_features.shape[0],):
        raise ValueError(f"test_labels must have shape ({test_features.shape[0]},), "
                         f"got {tuple(test_labels.shape)}")
    if test_features.shape[0] == 0:
        raise ValueError("no test features")
    classes = _num_classes(train_labels.detach().cpu(), test_labels, num_classes)
    ks = sorted({int(k) for k in ks})
    top1 = dict.fromkeys(ks, 0)
    top5 = dict.fromkeys(ks, 0)
    for rows, per_k in _chunked_votes(train_features, train_labels, test_features, ks, temperature, classes,
                                      normalize, index_spec, search_params, chunk_size):
        for k, result in per_k.items():
            top1[k] += count_hits(result.votes, test_labels[rows], 1)
            top5[k] += count_hits(result.votes, test_labels[rows], min(TOP5, k))
    n = test_features.shape[0]
    return {k: {"top1": 100.0 * top1[k] / n, "top5": 100.0 * top5[k] / n} for k in ks}


def knn_votes(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor, k: int,
              temperature: float = DEFAULT_TEMPERATURE, num_classes: int | None = None, *,
              normalize: bool = True, index_spec: str = EXACT_INDEX) -> KNNVotes:
    """Neighbours and class votes of every test sample for one ``k`` (held in memory: n_test x classes).

    Example:
        >>> train = torch.randn(50, 8); labels = torch.arange(50) % 5
        >>> knn_votes(train, labels, train[:3], k=4).votes.shape
        torch.Size([3, 5])
    """
    _check_inputs(train_features, train_labels, test_features, [k], temperature)
    classes = _num_classes(train_labels.detach().cpu(), None, num_classes)
    parts = [per_k[k] for _, per_k in _chunked_votes(train_features, train_labels, test_features, [k],
                                                     temperature, classes, normalize, index_spec, None,
                                                     DEFAULT_QUERY_CHUNK)]
    if not parts:
        raise ValueError("no test features")
    return KNNVotes(torch.cat([p.neighbor_indices for p in parts]),
                    torch.cat([p.neighbor_similarities for p in parts]), torch.cat([p.votes for p in parts]))
