"""The dense figures: panels per image, what they draw, and clear errors for inputs they cannot draw."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from dinofeat.viz.dense_figures import match_figure, pca_figure, segment_figure, similarity_figure

IMAGE = np.zeros((32, 48, 3), np.uint8)
TALL = np.zeros((48, 32, 3), np.uint8)


def test_pca_and_segment_draw_a_row_of_two_panels_per_image():
    fig = pca_figure([IMAGE, TALL], [torch.rand(4, 6, 3), torch.rand(6, 4, 3)], ["a.png", "b.png"])
    assert [axis.get_title() for axis in fig.axes] == ["a.png", "PCA 1-3 as RGB", "b.png", "PCA 1-3 as RGB"]
    pca_panel = fig.axes[1].get_images()[0]
    assert pca_panel.get_extent() == [-0.5, 47.5, 31.5, -0.5]  # the 4 x 6 map covers the picture
    fig = segment_figure([IMAGE], [torch.randint(0, 12, (4, 6))], k=12)
    overlay = fig.axes[1].get_images()[1]
    assert overlay.get_cmap().N == 12 and overlay.get_clim() == (-0.5, 11.5)  # one colour per id


def test_similarity_draws_a_row_per_point_and_a_column_per_image():
    maps = [torch.rand(2, 4, 6), torch.rand(2, 6, 4)]
    fig = similarity_figure([IMAGE, TALL], maps, [(3.0, 4.0), (10.0, 20.0)], ["q.png", "t.png"],
                            ["(1, 2)", "(5, 9)"])
    titles = [axis.get_title() for axis in fig.axes]
    assert titles == ["query (1, 2)", "q.png", "t.png", "query (5, 9)", "q.png", "t.png"]
    heat = fig.axes[1].get_images()[1]
    assert heat.get_array().shape == (32, 48)  # upsampled to the picture
    assert heat.get_clim()[1] == 1.0


def test_match_figure_draws_one_line_per_pair():
    points = np.array([[4.0, 4.0], [20.0, 10.0], [40.0, 30.0]])
    fig = match_figure(IMAGE, TALL, points, points[:, ::-1], np.array([0.9, 0.8, 0.5]))
    (axis,) = fig.axes
    assert len(axis.get_lines()) == 3
    assert axis.get_images()[0].get_array().shape == (48, 80, 3)  # side by side, padded to the taller


@pytest.mark.parametrize(("call", "message"), [
    (lambda: pca_figure([], []), "at least one image"),
    (lambda: segment_figure([IMAGE], [], 3), "1 pictures but 0 segment maps"),
    (lambda: similarity_figure([IMAGE], [torch.rand(1, 4, 6)], [(1.0, 1.0), (2.0, 2.0)]),
     "one row per point (2)"),
    (lambda: match_figure(IMAGE, IMAGE, np.zeros((2, 2)), np.zeros((3, 2)), np.zeros(2)), "must be as many"),
])
def test_refuses_what_it_cannot_draw(call, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        call()
