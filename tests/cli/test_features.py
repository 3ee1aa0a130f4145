"""``dinofeat models / embed / attention`` through main([...]) with a tiny model saved in tmp_path."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

from dinofeat.cli import main
from dinofeat.cli.features import MAX_ATTENTION_ROWS
from dinofeat.features.stores.arrays import load_features
from dinofeat.hub.format import HubConfig, save_pretrained
from dinofeat.hub.loading import load
from dinofeat.models import arch_from_dict, build_backbone
from tests.helpers.common import TINY_VIT


@pytest.fixture
def tiny_dir(tmp_path):
    arch = arch_from_dict(TINY_VIT)
    return save_pretrained(build_backbone(arch), tmp_path / "tiny", HubConfig(arch=arch, name="tiny"))


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    return folder


def test_models_lists_the_zoo(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "vit_s16" in out and "dinov2_vitg14_reg" in out


@pytest.mark.parametrize("suffix", [".npy", ".safetensors"])
def test_embed_writes_features_and_file_list(tiny_dir, images, tmp_path, suffix, capsys):
    out = tmp_path / f"feats{suffix}"
    argv = ["embed", str(images), "--model", str(tiny_dir), "-o", str(out), "--batch-size", "2",
            "--size", "32", "--device", "cpu"]
    assert main(argv) == 0
    features, files = load_features(out)
    assert features.shape == (3, 32)
    assert files == [str(images / f"{i}.png") for i in range(3)]
    expected = load(tiny_dir, device="cpu").embed(sorted(images.iterdir()), size=32)
    assert np.allclose(features.numpy(), expected.numpy(), atol=1e-6)
    if suffix == ".safetensors":
        with safe_open(str(out), "pt") as handle:
            assert json.loads(handle.metadata()["files"]) == files
            assert handle.metadata()["model"] == "tiny"
    else:
        assert (tmp_path / "feats.txt").read_text().splitlines() == files
    assert "wrote (3, 32) features" in capsys.readouterr().err
    # No temporary leftovers (the empty lock file of dinofeat.utils.locking stays, by design).
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") and p.suffix != ".lock"]


def test_embed_error_keeps_previous_output(tiny_dir, images, tmp_path, capsys):
    out = tmp_path / "feats.npy"
    out.write_bytes(b"previous")
    (images / "broken.png").write_bytes(b"not a png")
    assert main(["embed", str(images), "-m", str(tiny_dir), "-o", str(out), "--device", "cpu"]) == 2
    assert "broken.png" in capsys.readouterr().err
    assert out.read_bytes() == b"previous"


def test_embed_unknown_model_suggests(images, tmp_path, capsys):
    assert main(["embed", str(images), "-m", "vit_s61", "-o", str(tmp_path / "f.npy")]) == 2
    assert "vit_s16" in capsys.readouterr().err


def test_attention_figure(tiny_dir, images, tmp_path, capsys):
    out = tmp_path / "attn.png"
    argv = ["attention", str(images / "0.png"), "--weights", str(tiny_dir), "-o", str(out),
            "--size", "32", "48", "--threshold", "0.6", "--device", "cpu"]
    assert main(argv) == 0
    with Image.open(out) as figure:
        assert figure.format == "PNG" and figure.width > figure.height > 100
        one_row = figure.size
    # A folder and a file: a row per image (the folder's 3, then the file), same width.
    assert main([*argv[:1], str(images), *argv[1:]]) == 0
    assert "of 4 image(s) (2 heads, 4x6 patches)" in capsys.readouterr().err
    with Image.open(out) as figure:
        assert figure.width == one_row[0] and figure.height > 3 * one_row[1]


def test_attention_figure_refuses_too_many_images_before_loading(images, tmp_path, capsys):
    for index in range(3, MAX_ATTENTION_ROWS + 1):
        Image.new("RGB", (8, 8)).save(images / f"{index}.png")
    argv = ["attention", str(images), "-m", str(tmp_path / "no_model"), "-o", str(tmp_path / "a.png")]
    assert main(argv) == 2
    assert f"at most {MAX_ATTENTION_ROWS} images, got {MAX_ATTENTION_ROWS + 1}" in capsys.readouterr().err
    assert not (tmp_path / "a.png").exists()


def test_embed_skip_unreadable_counts_names_and_leaves_them_out(tiny_dir, images, tmp_path, capsys):
    (images / "1b_broken.png").write_bytes(b"not a png")
    out = tmp_path / "feats.npy"
    argv = ["embed", str(images), "-m", str(tiny_dir), "-o", str(out), "--size", "32", "--device", "cpu",
            "--workers", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "1b_broken.png" in err and "--skip-unreadable" in err and "Traceback" not in err
    assert not out.exists()
    assert main([*argv, "--skip-unreadable"]) == 0
    assert "skipped 1 unreadable image(s): " + str(images / "1b_broken.png") in capsys.readouterr().err
    features, files = load_features(out)
    good = [images / f"{i}.png" for i in range(3)]
    assert files == [str(f) for f in good]
    expected = load(tiny_dir, device="cpu").embed(good, size=32)
    assert np.allclose(features.numpy(), expected.numpy(), atol=1e-6)


def test_embed_checks_the_output_name_and_size_before_any_work(images, tmp_path, capsys):
    # The model does not exist: these must be refused before anything is loaded.
    argv = ["embed", str(images), "-m", str(tmp_path / "no_model"), "-o", str(tmp_path / "feats.txt")]
    assert main(argv) == 2
    assert "must end in .npy or .safetensors" in capsys.readouterr().err
    argv = ["embed", str(images), "-m", str(tmp_path / "no_model"), "-o", str(tmp_path / "f.npy"),
            "--size", "0"]
    assert main(argv) == 2
    assert "--size values must be positive, got [0]" in capsys.readouterr().err


def test_unreadable_feature_files_are_named(tmp_path):
    np.save(tmp_path / "lone.npy", np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(FileNotFoundError, match=r"lone\.npy has no file list lone\.txt"):
        load_features(tmp_path / "lone.npy")
    (tmp_path / "text.npy").write_text("not numpy")
    (tmp_path / "text.txt").write_text("a.png\n")
    with pytest.raises(ValueError, match=r"text\.npy is not a readable \.npy feature file"):
        load_features(tmp_path / "text.npy")
    (tmp_path / "cut.safetensors").write_bytes(b"\x08\x00\x00")
    with pytest.raises(ValueError, match=r"cut\.safetensors is not a readable safetensors feature file"):
        load_features(tmp_path / "cut.safetensors")
    with pytest.raises(FileNotFoundError, match="feature file not found"):
        load_features(tmp_path / "missing.safetensors")
