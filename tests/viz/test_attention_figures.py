"""The attention figure: a row of panels per image, and clear errors for inputs it cannot draw."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from dinofeat.viz.attention_figures import attention_figure, attention_grid

IMAGE = np.zeros((32, 48, 3), np.uint8)


def test_one_row_per_image_with_image_heads_mean_and_masks():
    assert len(attention_figure(IMAGE, torch.rand(2, 4, 6), 8).axes) == 2 + 3
    grid = attention_grid([(IMAGE, torch.rand(3, 4, 6))] * 4, 8)
    titles = [axis.get_title() for axis in grid.axes]
    assert titles == ["image", "head 0", "head 1", "head 2", "mean", "60% masks"] * 4


@pytest.mark.parametrize(("rows", "message"), [
    ([], "at least one"),
    ([(IMAGE, torch.rand(4, 6))], "must be (heads, h, w)"),
    ([(IMAGE, torch.rand(2, 4, 6)), (IMAGE, torch.rand(3, 4, 6))], "same number of heads, got [2, 3]"),
])
def test_refuses_what_it_cannot_draw(rows, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        attention_grid(rows, 8)
