"""``dinofeat pca / similarity / match / segment`` through the real main() with the bundled model."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dinofeat.cli import main
from dinofeat.cli.dense import MAX_FIGURE_IMAGES
from dinofeat.viz.dense_figures import PANEL_INCHES

DPI = 100  # dinofeat.viz.attention_figures.save_figure's default


@pytest.fixture
def pictures(tmp_path):
    """Three small photos-like images: a bright disc on a gradient, at two sizes."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    for index, (height, width) in enumerate([(64, 80), (64, 80), (72, 64)]):
        yy, xx = np.mgrid[:height, :width]
        disc = (yy - height / 2) ** 2 + (xx - width / 2 - 6 * index) ** 2 < (height / 4) ** 2
        pixels = np.stack([xx * 3, yy * 3, np.full_like(xx, 80)], axis=2) % 256
        pixels[disc] = (250, 220, 40)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{index}.png")
    return folder


def _figure_size(rows: int, cols: int, aspect: float) -> tuple[int, int]:
    return round(PANEL_INCHES * cols * aspect * DPI), round((PANEL_INCHES * rows + 0.3) * DPI)


def _assert_png(path, expected: tuple[int, int]) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
    assert abs(width - expected[0]) <= 1 and abs(height - expected[1]) <= 1


def _fails(argv, capsys, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.mark.parametrize("mask", ["none", "first-component", "attention"])
def test_pca_draws_each_image_beside_its_pca(pictures, tmp_path, mask, capsys):
    out = tmp_path / "pca.png"
    assert main(["pca", str(pictures), "-o", str(out), "--size", "64", "--mask", mask]) == 0
    # 64 x 80 -> 64 x 80 (aspect 1.25) twice, 72 x 64 -> 80 x 64 (aspect 0.8): mean aspect 1.1
    _assert_png(out, _figure_size(3, 2, (1.25 + 1.25 + 0.8) / 3))
    assert f"PCA of 3 image(s) (mask: {mask})" in capsys.readouterr().err


def test_similarity_maps_points_of_the_original_image(pictures, tmp_path, capsys):
    out = tmp_path / "sim.png"
    argv = ["similarity", str(pictures / "0.png"), "--point", "40", "32", "--point", "0", "63",
            "--target", str(pictures / "1.png"), str(pictures / "2.png"), "-o", str(out), "--size", "64"]
    assert main(argv) == 0
    _assert_png(out, _figure_size(2, 4, (1.25 + 1.25 + 0.8) / 3))
    assert "2 point(s) over 3 image(s)" in capsys.readouterr().err


def test_a_point_outside_the_image_is_named_and_nothing_is_written(pictures, tmp_path, capsys):
    out = tmp_path / "sim.png"
    out.write_bytes(b"previous")
    argv = ["similarity", str(pictures / "0.png"), "--point", "80", "10", "-o", str(out), "--size", "64"]
    _fails(argv, capsys, "point (80, 10) is outside", "0.png", "80x64 pixels")
    assert out.read_bytes() == b"previous"
    _fails(["similarity", str(pictures), "--point", "1", "1", "-o", str(out)], capsys, "is a folder")


def test_match_draws_the_best_buddies(pictures, tmp_path, capsys):
    out = tmp_path / "matches.png"
    argv = ["match", str(pictures / "0.png"), str(pictures / "2.png"), "--top", "5", "-o", str(out),
            "--size", "64"]
    assert main(argv) == 0
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] > image.size[1]  # the two pictures side by side
    err = capsys.readouterr().err
    assert "best-buddy matches" in err
    _fails(["match", str(pictures / "0.png"), str(pictures / "1.png"), "--top", "0", "-o", str(out)],
           capsys, "--top must be >= 1, got 0")


def test_segment_colours_parts_jointly(pictures, tmp_path, capsys):
    out = tmp_path / "seg.png"
    assert main(["segment", str(pictures), "--k", "3", "-o", str(out), "--size", "64"]) == 0
    _assert_png(out, _figure_size(3, 2, (1.25 + 1.25 + 0.8) / 3))
    assert "3 parts over 3 image(s)" in capsys.readouterr().err


@pytest.mark.parametrize(("k", "needle"), [("0", "--k must be >= 1, got 0"),
                                           ("61", "--k 61 is larger than the number of patches (60)")])
def test_segment_refuses_impossible_k_before_writing(pictures, tmp_path, capsys, k, needle):
    out = tmp_path / "seg.png"
    _fails(["segment", str(pictures), "--k", k, "-o", str(out), "--size", "64"], capsys, needle)
    assert not out.exists()


def test_missing_images_and_too_many_images_are_refused(pictures, tmp_path, capsys):
    out = tmp_path / "x.png"
    _fails(["pca", str(pictures / "nope.png"), "-o", str(out)], capsys, "no such image file or folder",
           "nope.png")
    many = [str(pictures / "0.png")] * (MAX_FIGURE_IMAGES + 1)
    _fails(["segment", *many, "--k", "2", "-o", str(out)], capsys, f"at most {MAX_FIGURE_IMAGES} images")
    _fails(["pca", str(pictures), "--size", "0", "-o", str(out)], capsys, "--size takes one positive value")
    assert not out.exists()
