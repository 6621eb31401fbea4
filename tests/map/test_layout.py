"""The map's 2-D layout: deterministic with a seed, UMAP when installed, PCA (with the reason) when not."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from multimodal_embed.errors import InvalidInputError, MissingDependencyError
from multimodal_embed.map.layout import layout_2d, pca, place_by_neighbours
from tests.map.conftest import blobs


def _separated(xy: np.ndarray, y: np.ndarray) -> float:
    """Fraction of points whose nearest other point (2-D) is in the same group."""
    d = ((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    return float((y[d.argmin(axis=1)] == y).mean())


def test_pca_is_exact_and_deterministic():
    x, _ = blobs(k=3, d=16)
    a, b = pca(x, 2), pca(x.copy(), 2)
    assert np.array_equal(a, b)
    ref = np.linalg.svd(x - x.mean(0), full_matrices=False)[2][:2]  # principal axes, up to sign
    proj = (x - x.mean(0)) @ ref.T
    np.testing.assert_allclose(np.abs(a), np.abs(proj), atol=1e-4)


def test_pca_layout_separates_groups_and_says_it_was_asked_for():
    x, y = blobs(k=3, d=64)  # 64 dims: the 50-dimension PCA pre-reduction runs too
    lay = layout_2d(x, method="pca")
    assert lay.method == "pca" and lay.reason == "asked for" and lay.xy.shape == (len(x), 2)
    assert _separated(lay.xy, y) > 0.95


def test_without_umap_learn_the_layout_is_pca_with_the_reason(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "umap", None)  # `import umap` raises ImportError, as when not installed
    x, _ = blobs()
    lay = layout_2d(x)
    assert lay.method == "pca" and "umap-learn is not installed" in lay.reason and "[map]" in lay.reason
    assert "PCA, because umap-learn is not installed" in caplog.text
    with pytest.raises(MissingDependencyError, match="umap-learn"):
        layout_2d(x, method="umap")


def test_bad_arguments_and_tiny_inputs():
    with pytest.raises(InvalidInputError, match="layout method"):
        layout_2d(np.zeros((5, 3)), method="tsne")
    with pytest.raises(InvalidInputError, match="2-D"):
        layout_2d(np.zeros(5))
    assert layout_2d(np.zeros((0, 8))).xy.shape == (0, 2)
    one = layout_2d(np.ones((1, 8), np.float32))
    assert one.xy.shape == (1, 2) and np.isfinite(one.xy).all()


def test_place_by_neighbours_is_the_weighted_mean_of_the_exact_nearest():
    rng = np.random.default_rng(1)
    fitted, fxy, pts = rng.normal(size=(50, 5)), rng.normal(size=(50, 2)), rng.normal(size=(7, 5))
    got = place_by_neighbours(fitted, fxy, pts, k=3)
    for q, g in zip(pts, got):
        d = np.linalg.norm(fitted - q, axis=1)
        nn = np.argsort(d)[:3]
        w = 1 / (d[nn] + 1e-6)
        np.testing.assert_allclose(g, (fxy[nn] * w[:, None]).sum(0) / w.sum(), rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # numba compiles UMAP's kernels on first use (tens of seconds on 2 cores)
def test_umap_layout_is_deterministic_with_a_seed():
    pytest.importorskip("umap")
    x, y = blobs(n_per=40, k=3)
    a, b, c = layout_2d(x, seed=7), layout_2d(x, seed=7), layout_2d(x, seed=8)
    assert a.method == "umap"
    assert np.array_equal(a.xy, b.xy)
    assert not np.allclose(a.xy, c.xy)
    assert _separated(a.xy, y) > 0.95


@pytest.mark.slow
def test_above_fit_points_umap_fits_a_sample_and_places_the_rest():
    pytest.importorskip("umap")
    x, y = blobs(n_per=100, k=3)
    a = layout_2d(x, seed=3, fit_points=120)
    assert a.method == "umap" and "sample of 120 of 300" in a.reason
    assert np.array_equal(a.xy, layout_2d(x, seed=3, fit_points=120).xy)
    assert _separated(a.xy, y) > 0.9
