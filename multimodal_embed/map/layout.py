"""2-D coordinates for a map: UMAP (umap-learn) when installed, else PCA, with the reason said.

Deterministic for a given ``seed``: the vectors are first reduced to at most :data:`PRE_PCA_DIMS` dimensions by an
exact PCA (an eigendecomposition of the covariance, signs fixed), then UMAP runs with ``random_state=seed``
(single-threaded, which is what makes it reproducible). Above ``fit_points`` rows, UMAP is fitted on a seeded
uniform sample and the other rows are placed by ``UMAP.transform`` in chunks (a tqdm bar): memory and time stay
bounded (see :func:`layout_2d`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidInputError
from ..utils import progress

logger = logging.getLogger(__name__)

PRE_PCA_DIMS = 50  # UMAP's neighbour search on 50 PCA dimensions: faster, and the layout barely changes
FIT_POINTS = 30_000  # above this, UMAP is fitted on a sample and the rest placed with transform
TRANSFORM_CHUNK = 10_000
_COV_CHUNK = 65_536


@dataclass
class Layout:
    xy: np.ndarray  # (n, 2) float32
    method: str  # "umap" or "pca"
    reason: str  # why this method (e.g. "umap-learn is not installed: pip install 'multimodal-embed[map]'")


def pca(x: np.ndarray, k: int) -> np.ndarray:
    """The first ``k`` principal components of ``x`` (rows), deterministic: the covariance is accumulated in
    float64 chunks (no copy of ``x``), its eigenvectors' signs are fixed (largest loading positive)."""
    n, d = x.shape
    k = min(k, d)
    mean = np.zeros(d, np.float64)
    for s in range(0, n, _COV_CHUNK):
        mean += x[s:s + _COV_CHUNK].sum(axis=0, dtype=np.float64)
    mean /= max(n, 1)
    cov = np.zeros((d, d), np.float64)
    for s in range(0, n, _COV_CHUNK):
        c = x[s:s + _COV_CHUNK].astype(np.float64) - mean
        cov += c.T @ c
    _, vecs = np.linalg.eigh(cov)
    comps = vecs[:, ::-1][:, :k]
    signs = np.sign(comps[np.abs(comps).argmax(axis=0), np.arange(k)])
    comps = comps * np.where(signs == 0, 1.0, signs)
    out = np.empty((n, k), np.float32)
    for s in range(0, n, _COV_CHUNK):
        out[s:s + _COV_CHUNK] = (x[s:s + _COV_CHUNK].astype(np.float64) - mean) @ comps
    return out


def _umap_missing() -> str | None:
    try:
        import umap  # noqa: F401
    except ImportError as exc:
        return f"umap-learn is not installed ({exc}); pip install 'multimodal-embed[map]' for UMAP"
    return None


def layout_2d(vectors: np.ndarray, *, seed: int = 0, method: str = "auto", n_neighbors: int = 15,
              min_dist: float = 0.1, fit_points: int = FIT_POINTS, show_progress: bool | None = None) -> Layout:
    """2-D coordinates of ``vectors`` (one row per point).

    ``method``: ``"auto"`` (UMAP when umap-learn is installed and there are enough points, else PCA, with the
    reason), ``"umap"`` (an error without umap-learn) or ``"pca"``. ``fit_points``: UMAP is fitted on at most this
    many rows (a seeded sample) and the rest placed with ``transform``.
    """
    if method not in ("auto", "umap", "pca"):
        raise InvalidInputError(f"layout method must be 'auto', 'umap' or 'pca', got {method!r}")
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise InvalidInputError(f"vectors must be a 2-D matrix, got shape {x.shape}")
    n = len(x)
    if n == 0:
        return Layout(np.zeros((0, 2), np.float32), "pca", "no points")
    reduced = pca(x, PRE_PCA_DIMS) if x.shape[1] > PRE_PCA_DIMS else x
    missing = _umap_missing()
    if method == "umap" and missing:
        from ..errors import MissingDependencyError

        raise MissingDependencyError(missing)
    if method == "pca" or missing or n < 4:
        reason = ("asked for" if method == "pca" else missing or f"{n} points are too few for UMAP")
        if reason != "asked for":
            logger.warning("map layout: PCA, because %s", reason)
        xy = pca(reduced, 2)
        if xy.shape[1] < 2:
            xy = np.pad(xy, ((0, 0), (0, 2 - xy.shape[1])))
        return Layout(xy.astype(np.float32), "pca", reason)
    import umap

    nn = max(2, min(n_neighbors, n - 1))
    model = umap.UMAP(n_components=2, n_neighbors=nn, min_dist=min_dist, metric="euclidean", random_state=seed,
                      n_jobs=1, low_memory=True, init="spectral" if n > nn + 2 else "random", verbose=False)
    if n <= fit_points:
        xy = model.fit_transform(reduced)
        return Layout(np.asarray(xy, np.float32), "umap", "umap-learn")
    rng = np.random.default_rng(seed)
    fit_rows = np.sort(rng.choice(n, size=fit_points, replace=False))
    xy = np.empty((n, 2), np.float32)
    xy[fit_rows] = model.fit_transform(reduced[fit_rows])
    rest = np.setdiff1d(np.arange(n), fit_rows)
    chunks = [rest[s:s + TRANSFORM_CHUNK] for s in range(0, len(rest), TRANSFORM_CHUNK)]
    for rows in progress(chunks, show_progress, desc="placing points", unit="chunk"):
        xy[rows] = model.transform(reduced[rows])
    return Layout(xy, "umap", f"umap-learn, fitted on a seeded sample of {fit_points} of {n} points, the rest placed "
                              "with UMAP.transform")
