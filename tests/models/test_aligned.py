"""The domain gate of aligned models: spherical k-means and the gate's thresholds (pure tensors, no weights)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from multimodal_embed.errors import ConfigError
from multimodal_embed.models.aligned import AlignedVisionModel, ClassPrior, DomainGate, spherical_kmeans


def _clusters(n_per: int = 50, dim: int = 32, k: int = 3, spread: float = 0.05, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(k, dim, generator=g), dim=-1)
    x = centres.repeat_interleave(n_per, 0) + spread * torch.randn(k * n_per, dim, generator=g)
    return centres, x


def _orthogonal_to(centroids: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """``n`` random feature rows with zero cosine to every centroid: as far from the training domain as it gets."""
    x = F.normalize(torch.randn(n, centroids.shape[1], generator=torch.Generator().manual_seed(seed)), dim=-1)
    return x - (x @ centroids.T) @ torch.linalg.pinv(centroids.T)


def test_spherical_kmeans_finds_separated_clusters_deterministically():
    centres, x = _clusters()
    c = spherical_kmeans(x, 3, seed=1)
    assert torch.allclose(c.norm(dim=-1), torch.ones(3), atol=1e-5)
    best = (centres @ c.T).amax(dim=1)  # every true centre has a centroid next to it
    assert best.min() > 0.99, best
    assert torch.equal(c, spherical_kmeans(x, 3, seed=1))  # same seed, same bits
    assert spherical_kmeans(x[:2], 10).shape == (2, 32)  # never more centroids than rows


def test_gate_thresholds_are_the_held_out_quantiles_and_it_opens_in_domain():
    _, x = _clusters()
    held = x[::3] + 0.01  # held-out images near the training ones
    gate = DomainGate.fit(x, held, centroids=3, quantiles=(0.1, 0.5))
    sim = gate.similarity(held).squeeze(1)
    assert gate.low == pytest.approx(float(torch.quantile(sim, 0.1)), abs=1e-6)
    assert gate.high == pytest.approx(float(torch.quantile(sim, 0.5)), abs=1e-6)
    w = gate(held).squeeze(1)
    assert float((w == 1).float().mean()) >= 0.5 and w.min() >= 0  # at least half the held-out set: full residual
    outside = _orthogonal_to(gate.centroids, 64, seed=9)
    assert torch.equal(gate(outside), torch.zeros(64, 1))  # far from the domain: closed
    t = torch.linspace(0, 1, 21)[:, None]  # from outside the domain straight to a centroid
    w = gate(t * gate.centroids[0] + (1 - t) * F.normalize(outside[0], dim=0)).squeeze(1)
    assert w[0] == 0 and w[-1] == 1 and torch.all(w[1:] >= w[:-1])  # monotone in the similarity


def test_gate_rejects_bad_settings():
    _, x = _clusters()
    with pytest.raises(ConfigError):
        DomainGate(torch.ones(2, 4), 0.5, 0.5)
    with pytest.raises(ConfigError):
        DomainGate.fit(x, x, centroids=3, quantiles=(0.5, 0.1))
    with pytest.raises(ConfigError):
        DomainGate.fit(x, x[:0], centroids=3)


def test_gated_model_is_the_bridge_outside_the_domain_and_bounded_inside():
    torch.manual_seed(0)
    trunk = torch.nn.Identity()
    trunk.num_features = 32  # features are given directly: the trunk is never run here
    model = AlignedVisionModel("test_efficientnet", 16, trunk=trunk)
    prior = ClassPrior(torch.randn(10, 32), torch.zeros(10), F.normalize(torch.randn(10, 16), dim=-1))
    model.prior, model.max_residual = prior, 0.5
    centres, x = _clusters()
    model.gate = DomainGate(spherical_kmeans(x, 3), 0.5, 0.9)
    inside = centres + 0.001
    outside = _orthogonal_to(model.gate.centroids, 8, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(model.embed_features(outside), prior.bridge(outside))
        r = model.embed_features(inside) - prior.bridge(inside)
        assert r.norm(dim=-1).max() <= 0.5 + 1e-5 and r.norm(dim=-1).min() > 0.1
