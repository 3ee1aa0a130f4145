"""FeatureExtractor.features / iter_features: one pass, the same numbers as the single-purpose methods,
lazy decoding, clear errors."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from PIL import Image

import dinofeat
import dinofeat.data.inputs
from dinofeat.features.outputs import FEATURE_OUTPUTS
from tests.helpers.common import TINY_VIT

ALL = tuple(FEATURE_OUTPUTS)


@pytest.fixture
def tiny():
    return dinofeat.load(TINY_VIT, device="cpu")


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    for index in range(5):
        Image.fromarray(rng.integers(0, 256, (40, 44, 3), dtype=np.uint8)).save(tmp_path / f"{index}.png")
    return tmp_path


def test_every_output_equals_its_single_purpose_method_bit_for_bit(tiny, folder):
    kwargs = {"size": 32, "batch_size": 2}
    out = tiny.features(folder, outputs=ALL, n_layers=2, **kwargs)
    assert set(out) == set(ALL)
    assert torch.equal(out["cls"], tiny.embed(folder, **kwargs))
    assert torch.equal(out["patches"], tiny.patch_tokens(folder, **kwargs))
    assert torch.equal(out["layers"], tiny.intermediate_layers(folder, 2, **kwargs))
    assert torch.equal(out["attention"], tiny.cls_attention(folder, **kwargs))
    assert out["cls"].shape == (5, 32) and out["patches"].shape == (5, 4, 4, 32)
    assert out["attention"].shape == (5, 2, 4, 4) and out["layers"].shape == (2, 5, 17, 32)
    assert out["registers"].shape == (5, 0, 32)  # no registers: empty, not missing
    # ... and what the backbone itself gives for the preprocessed batch.
    batch = next(dinofeat.data.inputs.iter_batches(folder, tiny.preprocess, 32, 8))
    direct = tiny.backbone.forward_tokens(batch)
    assert torch.equal(out["cls"], direct.cls) and torch.equal(out["patches"], direct.patch_grid())
    assert torch.equal(out["layers"][-1, :, 0], out["cls"])  # the last layer is the final output


def test_registers_come_out_in_order_and_do_not_shift_the_patches():
    model = dinofeat.load({**TINY_VIT, "num_register_tokens": 3}, device="cpu")
    x = torch.randn(2, 3, 32, 40)
    out = model.features(x, outputs=("registers", "patches", "cls"))
    tokens = model.backbone.forward_tokens(x).tokens
    assert torch.equal(out["registers"], tokens[:, 1:4])
    assert torch.equal(out["patches"].flatten(1, 2), tokens[:, 4:])
    assert list(out) == ["registers", "patches", "cls"]


def test_iter_features_gives_indices_paths_and_decodes_only_the_batch_it_yields(tiny, folder, monkeypatch):
    opened = []
    real_open = dinofeat.data.files.open_image
    monkeypatch.setattr(dinofeat.data.inputs, "open_image",
                        lambda path: opened.append(path) or real_open(path))
    batches = tiny.iter_features(folder, outputs="cls", size=32, batch_size=2)
    assert inspect.isgenerator(batches) and opened == []
    first = next(batches)
    assert len(opened) == 2 and first.indices == range(0, 2)
    assert first.paths == (folder / "0.png", folder / "1.png")
    rest = list(batches)
    assert len(opened) == 5
    assert [b.indices for b in rest] == [range(2, 4), range(4, 5)]
    assert rest[-1].paths == (folder / "4.png",)
    joined = torch.cat([b.outputs["cls"] for b in [first, *rest]])
    assert torch.equal(joined, tiny.embed(folder, size=32, batch_size=2))


def test_in_memory_rows_have_no_path(tiny, folder):
    arrays = [np.zeros((32, 32, 3), np.uint8), folder / "3.png"]
    (batch,) = tiny.iter_features(arrays, outputs="patches", size=32)
    assert batch.paths == (None, folder / "3.png")
    (batch,) = tiny.iter_features(torch.randn(2, 3, 32, 32), outputs="patches")
    assert batch.paths == (None, None) and batch.outputs["patches"].shape == (2, 4, 4, 32)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"outputs": ("cls", "keys")}, ValueError, r"unknown feature output\(s\) 'keys'; choose from cls,"),
        ({"outputs": ()}, ValueError, "outputs is empty"),
        ({"outputs": "layers", "n_layers": 3}, ValueError, "n_layers must be between 1 and the depth 2, got"),
        ({"outputs": "layers", "n_layers": 0}, ValueError, "n_layers must be between 1"),
        ({"batch_size": 0}, ValueError, "batch_size must be positive"),
    ],
)
def test_bad_requests_fail_before_any_image_is_read(tiny, folder, monkeypatch, kwargs, error, match):
    monkeypatch.setattr(dinofeat.data.inputs, "open_image", lambda path: pytest.fail(f"opened {path}"))
    with pytest.raises(error, match=match):
        tiny.iter_features(folder, **kwargs)  # at the call, not at the first next()
    with pytest.raises(error, match=match):
        tiny.features(folder, **kwargs)


@pytest.mark.parametrize("name", ["attention", "layers"])
def test_vit_only_outputs_of_a_cnn_are_a_clear_error(name):
    model = dinofeat.load("resnet50", pretrained=False, device="cpu")
    with pytest.raises(TypeError, match=f"output '{name}' needs a Vision Transformer; resnet50 is a CNN"):
        model.features(torch.randn(1, 3, 64, 64), outputs=("cls", name))
    out = model.features(torch.randn(1, 3, 64, 64), outputs=("cls", "patches", "registers"))
    assert out["cls"].shape == (1, 2048) and out["patches"].shape == (1, 2, 2, 2048)
    assert out["registers"].shape == (1, 0, 2048)
