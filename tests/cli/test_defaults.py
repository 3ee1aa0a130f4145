"""Every command runs offline out of the box: without --model they use the bundled model."""

from __future__ import annotations

import json

import numpy as np
import pytest

import dinofeat
from dinofeat.cli import main
from dinofeat.features.stores.feature_set import FeatureSet
from dinofeat.registry import BUNDLED_MODEL
from dinofeat.search.index import ImageIndex
from tests.helpers.evaluation import make_image_folder

COMMON = ["--workers", "0", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("defaults")
    return make_image_folder(root / "train", per_class=4), make_image_folder(root / "val", seed=1)


def test_index_search_and_dedup_default_to_the_bundled_model(data, tmp_path, capsys):
    folder = data[0] / "class_0"
    assert main(["index", str(folder), "-o", str(tmp_path / "index"), *COMMON]) == 0
    index = ImageIndex.open(tmp_path / "index")
    assert index.model == BUNDLED_MODEL and index.dim == 192 and len(index) == 4
    expected = dinofeat.load(BUNDLED_MODEL, device="cpu").embed(sorted(folder.iterdir()))
    expected = expected / expected.norm(dim=1, keepdim=True)
    assert np.allclose(index.features.numpy(), expected.numpy(), atol=1e-5)
    capsys.readouterr()
    query = sorted(folder.iterdir())[1]
    assert main(["search", str(tmp_path / "index"), str(query), "--top", "1", *COMMON]) == 0
    assert f"1.0000  {query}" in capsys.readouterr().out
    assert main(["dedup", str(folder), "--threshold", "0.9999", *COMMON]) == 0
    assert "among 4 images" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["knn", "linear"])
def test_knn_and_linear_default_to_the_bundled_model(data, tmp_path, command):
    train, val = data
    extra = ["--k", "1", "3"] if command == "knn" else ["--epochs", "2", "--n-last-blocks", "1"]
    out, cache = tmp_path / "result.json", tmp_path / "cache"
    argv = [command, "--train", str(train), "--val", str(val), *extra, *COMMON]
    assert main([*argv, "--save-features", str(cache), "-o", str(out)]) == 0
    assert json.loads(out.read_text())["model"] == BUNDLED_MODEL
    assert FeatureSet.load(cache / "train.safetensors").model == BUNDLED_MODEL
    # Reusing saved features without --model trusts the file's model (no check against the default).
    assert main([command, "--load-features", str(cache), *extra, "-o", str(tmp_path / "again.json")]) == 0
