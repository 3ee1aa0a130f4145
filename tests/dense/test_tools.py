"""dinofeat.dense: similarity maps, best buddies, k-means parts, upsampling and point geometry on tokens
whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import dinofeat
from dinofeat.config.preprocess import PreprocessConfig
from dinofeat.dense.correspondences import grid_positions, mutual_nearest_neighbours
from dinofeat.dense.segmentation import cluster_patches
from dinofeat.dense.similarity import point_similarity, similarity_maps
from dinofeat.dense.upsample import upsample_maps, upsample_tokens
from dinofeat.dense.views import PatchView, dense_size, prepare_view, token_stride, view_features


# ------------------------------------------------------------------ similarity
def test_a_patch_is_most_similar_to_itself_and_to_its_copy_in_a_target():
    patches = torch.randn(5, 6, 16)
    shifted = torch.roll(patches, shifts=(1, 2), dims=(0, 1))  # the same content, moved
    query, target = point_similarity(patches, [(2, 3), (0, 0)], [shifted])
    assert query.shape == (2, 5, 6) and target.shape == (2, 5, 6)
    one = torch.tensor(1.0)
    assert torch.allclose(query[0, 2, 3], one) and torch.allclose(query[1, 0, 0], one)
    assert query.flatten(1).argmax(1).tolist() == [2 * 6 + 3, 0]
    assert target.flatten(1).argmax(1).tolist() == [3 * 6 + 5, 1 * 6 + 2]
    assert query.min() >= -1 - 1e-6 and query.max() <= 1 + 1e-6


def test_similarity_is_the_cosine():
    tokens = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0], [1.0, 1.0]])
    scores = similarity_maps(torch.tensor([[2.0, 0.0]]), tokens)
    assert torch.allclose(scores, torch.tensor([[1.0, 0.0, -1.0, 2**-0.5]]))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: point_similarity(torch.randn(3, 4, 8), [(3, 0)]), r"patch \(3, 0\) is outside the 3x4 grid"),
        (lambda: point_similarity(torch.randn(3, 4, 8), []), "at least one query point"),
        (lambda: point_similarity(torch.randn(12, 8), [(0, 0)]), r"must be \(h, w, D\)"),
        (lambda: similarity_maps(torch.randn(1, 8), torch.randn(3, 4, 6)), "queries have 8 dims, tokens 6"),
    ],
)
def test_similarity_bad_inputs(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ------------------------------------------------------------------ correspondences
def test_best_buddies_of_a_permuted_copy_recover_the_permutation():
    a = torch.randn(4, 5, 32)
    permutation = torch.randperm(20)
    b = a.reshape(20, 32)[permutation].reshape(5, 4, 32) * 3.0  # scale does not change the cosine
    matches = mutual_nearest_neighbours(a, b)
    assert len(matches) == 20
    assert torch.equal(permutation[matches.target], matches.source)
    assert torch.allclose(matches.similarity, torch.ones(20))


def test_matches_are_mutual_only_and_strongest_first():
    a = torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    b = torch.tensor([[1.0, 0.05, 0.0], [0.0, 0.8, 0.6], [0.0, 0.0, -1.0]])
    matches = mutual_nearest_neighbours(a, b)
    # a1's nearest is b0, but b0's nearest is a0: a1 has no buddy; a3's nearest b1 prefers a2.
    assert list(zip(matches.source.tolist(), matches.target.tolist(), strict=True)) == [(0, 0), (2, 1)]
    assert matches.similarity[0] > matches.similarity[1]
    assert len(matches.top(1)) == 1 and matches.top(1).source.tolist() == [0]
    with pytest.raises(ValueError, match="number of matches must be >= 1"):
        matches.top(0)
    with pytest.raises(ValueError, match="dimensions differ: 3 and 4"):
        mutual_nearest_neighbours(a, torch.randn(2, 4))


def test_grid_positions_are_row_major():
    assert grid_positions(torch.tensor([0, 4, 7]), (2, 4)).tolist() == [[0, 0], [1, 0], [1, 3]]


# ------------------------------------------------------------------ segmentation
def _three_parts(grid_rows: list[list[int]], dim: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    centres = torch.eye(dim)[:3] * 5
    truth = torch.tensor(grid_rows)
    return centres[truth] + 0.05 * torch.randn(*truth.shape, dim), truth


def test_cosegmentation_gives_the_same_id_to_the_same_part_in_every_image():
    first, truth_first = _three_parts([[0, 0, 0, 0], [0, 1, 1, 0], [0, 2, 2, 0]])
    second, truth_second = _three_parts([[2, 2, 0], [1, 0, 0], [1, 0, 0], [0, 0, 0], [0, 0, 0]])
    labels_first, labels_second = cluster_patches([first, second], k=3, seed=1)
    assert labels_first.shape == (3, 4) and labels_second.shape == (5, 3)
    assert labels_first.dtype == torch.int64
    # Part 0 is the largest (cluster 0), parts 1 and 2 have 4 and 4 patches: compare as a mapping.
    pairs = zip(truth_first.flatten().tolist(), labels_first.flatten().tolist(), strict=True)
    mapping = dict(pairs)
    assert mapping[0] == 0 and sorted(mapping.values()) == [0, 1, 2]
    expected = torch.tensor([mapping[t] for t in truth_second.flatten().tolist()]).reshape(5, 3)
    assert torch.equal(labels_second, expected)
    again = cluster_patches([first, second], k=3, seed=1)
    assert torch.equal(again[0], labels_first)  # deterministic for a seed


def test_one_batch_tensor_is_clustered_whole_and_k_is_checked():
    tokens, truth = _three_parts([[0, 0, 1], [0, 2, 1]])
    (labels,) = cluster_patches(torch.stack([tokens, tokens]), k=3)
    assert labels.shape == (2, 2, 3) and torch.equal(labels[0], labels[1])
    assert labels[0][truth == 0].tolist() == [0, 0, 0]  # the largest part is cluster 0
    for bad in (0, 13):
        message = rf"k must be between 1 and the number of patches \(12\), got {bad}"
        with pytest.raises(ValueError, match=message):
            cluster_patches(torch.stack([tokens, tokens]), k=bad)
    with pytest.raises(ValueError, match="must share D"):
        cluster_patches([torch.randn(2, 2, 4), torch.randn(2, 2, 5)], k=2)


# ------------------------------------------------------------------ upsampling
def test_upsampling_keeps_constants_and_ramps_and_nearest_repeats():
    constant = torch.full((1, 2, 3, 5), 7.0)
    assert torch.allclose(upsample_tokens(constant, (16, 24)), torch.full((1, 16, 24, 5), 7.0))
    ramp = torch.arange(4.0).repeat(2, 1)  # (2, 4): 0 1 2 3 in each row
    up = upsample_maps(ramp, (2, 8))
    # Interior pixels interpolate linearly between patch centres; the border pixels clamp.
    assert torch.allclose(up[0], torch.tensor([0.0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.0]))
    tokens = torch.randn(3, 4, 6)
    nearest = upsample_tokens(tokens, (6, 8), mode="nearest")
    assert torch.equal(nearest, tokens.repeat_interleave(2, 0).repeat_interleave(2, 1))
    with pytest.raises(ValueError, match="unknown upsampling mode 'area'"):
        upsample_maps(ramp, (4, 4), mode="area")
    with pytest.raises(ValueError, match=r"tokens must be \(N, h, w, D\)"):
        upsample_tokens(torch.randn(4, 6), (8, 8))


# ------------------------------------------------------------------ geometry of points
def test_dense_size_keeps_the_aspect_in_whole_patches():
    assert dense_size(640, 480, 224, 16) == (224, 304)
    assert dense_size(300, 600, 100, 16) == (208, 96)  # 200 x 100 px, rounded to whole patches
    assert dense_size(10, 10, (40, 70), 16) == (48, 64)
    assert dense_size(10, 10, 3, 16) == (16, 16)  # never less than one patch
    with pytest.raises(ValueError, match="size must be positive"):
        dense_size(10, 10, 0, 16)


def test_points_map_through_the_resize_to_their_patch():
    view = PatchView("cat.png", (200, 100), np.zeros((32, 64, 3), np.uint8), patch_size=8)  # scale 0.32
    assert view.grid == (4, 8)
    assert view.patch_of(0, 0) == (0, 0)
    assert view.patch_of(199, 99) == (3, 7)
    assert view.patch_of(100, 50) == (2, 4)  # the centre pixel starts patch (2, 4)
    assert view.patch_of(24, 24) == (0, 0) and view.patch_of(25, 25) == (1, 1)  # 25.5 * 0.32 = 8.16
    for x, y in ((200, 0), (-1, 5), (3, 100)):
        with pytest.raises(ValueError, match=rf"point \({x}, {y}\) is outside cat.png, which is 200x100"):
            view.patch_of(x, y)


def test_prepare_view_resizes_a_file_whole(tmp_path):
    Image.fromarray(np.full((30, 50, 3), 200, np.uint8)).save(tmp_path / "a.png")
    view = prepare_view(tmp_path / "a.png", PreprocessConfig(), patch_size=8, size=24)
    assert view.original_size == (50, 30) and view.picture.shape == (24, 40, 3)
    assert view.name == str(tmp_path / "a.png")
    assert view.tensor(PreprocessConfig()).shape == (1, 3, 24, 40)


def test_views_of_a_cnn_use_its_output_stride_as_the_patch():
    model = dinofeat.load("resnet50", pretrained=False, device="cpu")
    assert token_stride(model) == 32
    picture = Image.fromarray(np.zeros((40, 60, 3), np.uint8))  # -> 64 x 96 px
    view = prepare_view(picture, model.preprocess, token_stride(model), size=64)
    assert view.picture.shape == (64, 96, 3) and view.grid == (2, 3)
    (out,) = view_features(model, [view], ("cls", "patches"))
    assert out["patches"].shape == (2, 3, 2048) and out["cls"].shape == (2048,)
