"""Linear probe: official initialisation/optimiser settings, learns separable data, feature layout."""

from __future__ import annotations

import pytest
import torch

import dinofeat
from dinofeat.evaluation.linear import LinearProbeConfig, linear_probe_features, train_linear_probe


def _separable(n: int, dim: int, classes: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    directions = torch.nn.functional.normalize(torch.randn(classes, dim, generator=gen), dim=1) * 4
    labels = torch.randint(0, classes, (n,), generator=gen)
    return directions[labels] + 0.3 * torch.randn(n, dim, generator=gen), labels


def test_learns_linearly_separable_data():
    x, y = _separable(600, 24, 6, seed=0)
    vx, vy = _separable(800, 24, 6, seed=0)  # same seed: same class directions; rows 600+ are unseen
    result = train_linear_probe(x, y, vx[600:], vy[600:], LinearProbeConfig(epochs=15, batch_size=64,
                                                                            base_lr=0.05))
    assert result["last"]["top1"] >= 99.0
    assert result["best"]["top1"] >= result["last"]["top1"]
    assert result["last"]["top5"] == 100.0
    assert result["lr"] == pytest.approx(0.05 * 64 / 256)
    assert len(result["history"]) == 15


def test_default_config_is_official():
    config = LinearProbeConfig()
    assert (config.epochs, config.momentum, config.weight_decay, config.lr) == (100, 0.9, 0.0, 0.004)


def test_features_concatenate_cls_of_last_blocks_and_avgpool():
    model = dinofeat.load({"patch_size": 8, "embed_dim": 32, "depth": 3, "num_heads": 2, "img_size": 32},
                          pretrained=False, device="cpu")
    batch = torch.randn(2, 3, 32, 32)
    layers = model.intermediate_layers(batch, 2)
    features = linear_probe_features(model, 2, avgpool=True)(batch)
    expected = torch.cat([layers[0][:, 0], layers[1][:, 0], layers[1][:, 1:].mean(1)], dim=1)
    torch.testing.assert_close(features, expected)
    torch.testing.assert_close(linear_probe_features(model, 1)(batch), model.embed(batch))


def test_bad_inputs():
    with pytest.raises(ValueError, match="same dim"):
        train_linear_probe(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), torch.randn(4, 5),
                           torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="positive"):
        train_linear_probe(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), torch.randn(4, 3),
                           torch.zeros(4, dtype=torch.long), LinearProbeConfig(epochs=0))
