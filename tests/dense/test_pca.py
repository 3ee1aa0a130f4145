"""dinofeat.dense.pca: against an independent numpy SVD, masks, joint fits, RGB scaling, foregrounds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import dinofeat.dense.pca as pca_module
from dinofeat.dense import attention_foreground, first_component_mask, fit_pca, foreground_mask


def _anisotropic_tokens(shape: tuple[int, ...], dim: int = 24) -> torch.Tensor:
    """Random tokens with clearly distinct variances per direction (a well-posed PCA)."""
    scales = torch.linspace(5.0, 0.5, dim)
    rotation, _ = torch.linalg.qr(torch.randn(dim, dim))
    return (torch.randn(*shape, dim) * scales) @ rotation.T + 3.0


def test_components_equal_numpy_svd_up_to_sign():
    tokens = _anisotropic_tokens((3, 6, 7))
    pca = fit_pca(tokens, n_components=5)
    rows = tokens.reshape(-1, tokens.shape[-1]).double().numpy()
    centred = rows - rows.mean(axis=0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    ours = pca.components.double().numpy()
    signs = np.sign((ours * vt[:5]).sum(axis=1))
    assert np.all(np.abs(signs) == 1)
    np.testing.assert_allclose(ours, vt[:5] * signs[:, None], atol=1e-5)
    np.testing.assert_allclose(pca.explained_variance.numpy(), singular[:5] ** 2 / (len(rows) - 1), rtol=1e-5)
    np.testing.assert_allclose(pca.mean.numpy(), rows.mean(axis=0), atol=1e-5)
    projected = pca.project(tokens).reshape(-1, 5).double().numpy()
    np.testing.assert_allclose(projected, centred @ (vt[:5] * signs[:, None]).T, atol=1e-4)


def test_sign_convention_makes_the_largest_loading_positive():
    pca = fit_pca(_anisotropic_tokens((2, 5, 5)), n_components=4)
    largest = pca.components.abs().argmax(dim=1)
    assert (pca.components[torch.arange(4), largest] > 0).all()


def test_mask_fits_only_the_masked_tokens_and_lists_fit_jointly():
    tokens = _anisotropic_tokens((2, 5, 6))
    mask = torch.rand(2, 5, 6) > 0.4
    masked = fit_pca(tokens, mask=mask)
    subset = fit_pca(tokens[mask])
    assert torch.allclose(masked.components, subset.components, atol=1e-6)
    assert torch.allclose(masked.low, subset.low) and torch.allclose(masked.high, subset.high)
    other = _anisotropic_tokens((1, 3, 4))  # a different grid joins the same fit
    joint = fit_pca([tokens, other])
    flat = fit_pca(torch.cat([tokens.reshape(-1, 24), other.reshape(-1, 24)]))
    assert torch.allclose(joint.components, flat.components, atol=1e-6)


def test_to_rgb_is_in_unit_range_consistent_across_calls_and_black_outside_the_mask():
    tokens = _anisotropic_tokens((2, 6, 6))
    pca = fit_pca(tokens)
    rgb = pca.to_rgb(tokens)
    assert rgb.shape == (2, 6, 6, 3) and rgb.min() >= 0 and rgb.max() <= 1
    assert torch.equal(pca.to_rgb(tokens[1:]), rgb[1:])  # colours do not depend on the batch
    mask = torch.zeros(2, 6, 6, dtype=torch.bool)
    mask[:, 2:4, 2:4] = True
    masked = pca.to_rgb(tokens, mask)
    assert masked[~mask].abs().sum() == 0 and torch.equal(masked[mask], rgb[mask])
    # The fitted range comes from the 1st / 99th percentiles: about 1 % of values clip to each end.
    share_low = (rgb == 0).float().mean().item()
    assert 0.005 < share_low < 0.03


def _object_on_background(dim: int = 16, flip: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens of 2 images whose centre block differs strongly from the rest."""
    background, foreground = torch.zeros(dim), torch.zeros(dim)
    background[0], foreground[0] = (4.0, -4.0) if flip else (-4.0, 4.0)
    tokens = background + 0.1 * torch.randn(2, 8, 8, dim)
    truth = torch.zeros(2, 8, 8, dtype=torch.bool)
    truth[0, 2:5, 3:7] = True
    truth[1, 4:7, 1:4] = True
    tokens[truth] = foreground + 0.1 * torch.randn(int(truth.sum()), dim)
    return tokens, truth


@pytest.mark.parametrize("flip", [False, True])
def test_first_component_mask_finds_the_object_whatever_the_sign(flip):
    tokens, truth = _object_on_background(flip=flip)
    assert torch.equal(first_component_mask(tokens), truth)
    assert torch.equal(foreground_mask("first-component", tokens), truth)


def test_attention_foreground_keeps_the_attended_block():
    attention = torch.full((1, 2, 6, 6), 0.001)
    attention[0, :, 1:3, 1:3] = 0.2
    mask = attention_foreground(attention, threshold=0.95)  # the block holds 96 % of the mass
    expected = torch.zeros(1, 6, 6, dtype=torch.bool)
    expected[0, 1:3, 1:3] = True
    assert torch.equal(mask, expected)
    default = foreground_mask("attention", torch.zeros(1, 6, 6, 4), attention)  # 60 %: part of the block
    assert default is not None and 0 < default.sum() < 4 and not (default & ~expected).any()
    assert foreground_mask("none", torch.zeros(1, 6, 6, 4)) is None


GRID = torch.randn(1, 2, 2, 4)
ROWS = torch.randn(9, 4)
NO_PATCH = torch.zeros(1, 2, 2, dtype=torch.bool)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: fit_pca(GRID, n_components=5), "between 1 and the token dimension 4"),
        (lambda: fit_pca(GRID, mask=NO_PATCH), r"is the mask empty\?"),
        (lambda: fit_pca(GRID, mask=NO_PATCH[0]), "mask #0 must be bool"),
        (lambda: fit_pca(torch.randn(2, 3, 4, 5, 6)), "tokens #0 must be"),
        (lambda: fit_pca([]), "empty list"),
        (lambda: fit_pca([torch.randn(4, 3), ROWS]), "differ in dimension"),
        (lambda: fit_pca(ROWS, n_components=2).to_rgb(ROWS), "at least 3 components"),
        (lambda: fit_pca(ROWS).project(torch.randn(9, 5)), "fitted on 4"),
        (lambda: foreground_mask("otsu", GRID), "unknown foreground method 'otsu'"),
        (lambda: foreground_mask("attention", GRID), "needs attention maps"),
    ],
)
def test_bad_inputs_raise_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_the_rgb_range_of_a_huge_fit_comes_from_an_even_subsample(monkeypatch):
    tokens = _anisotropic_tokens((20000,), dim=6)
    full = fit_pca(tokens)
    monkeypatch.setattr(pca_module, "QUANTILE_MAX_VALUES", 30000)  # torch.quantile's limit is 2**24
    sampled = fit_pca(tokens)
    assert torch.equal(sampled.components, full.components)
    assert torch.allclose(sampled.low, full.low, rtol=0.1)
    assert torch.allclose(sampled.high, full.high, rtol=0.1)
