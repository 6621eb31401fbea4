"""2-D coordinates for a map: UMAP (umap-learn) when installed, else PCA, with the reason said.

Deterministic for a given ``seed``: the vectors are first reduced to at most :data:`PRE_PCA_DIMS` dimensions by an
exact PCA (an eigendecomposition of the covariance, signs fixed), then UMAP runs with ``random_state=seed``
(single-threaded, which is what makes it reproducible). Above ``fit_points`` rows, UMAP is fitted on a seeded
uniform sample and every other row is placed among its nearest fitted rows (:func:`place_by_neighbours`, in chunks,
with a tqdm bar): memory and time stay bounded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidInputError
from ..utils import progress

logger = logging.getLogger(__name__)

PRE_PCA_DIMS = 50  # UMAP's neighbour search on 50 PCA dimensions: faster, and the layout barely changes
FIT_POINTS = 20_000  # above this, UMAP is fitted on a seeded sample and the rest placed among their neighbours
PLACE_CHUNK = 1_024  # rows placed at a time: a few (1,024 x fit_points) float32 temporaries, ~80 MB each
PLACE_NEIGHBOURS = 10
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
    many rows (a seeded sample) and the rest placed among their nearest fitted rows.
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
    xy[rest] = place_by_neighbours(reduced[fit_rows], xy[fit_rows], reduced[rest], show_progress=show_progress)
    return Layout(xy, "umap", f"umap-learn, fitted on a seeded sample of {fit_points} of {n} points; the others "
                              f"placed at the distance-weighted mean of their {PLACE_NEIGHBOURS} nearest fitted points")


def place_by_neighbours(fitted: np.ndarray, fitted_xy: np.ndarray, points: np.ndarray, *,
                        k: int = PLACE_NEIGHBOURS, show_progress: bool | None = None) -> np.ndarray:
    """2-D positions of ``points``: the inverse-distance-weighted mean position of each one's ``k`` nearest
    ``fitted`` rows (exact, in chunks of :data:`PLACE_CHUNK` rows: memory stays ``PLACE_CHUNK x len(fitted)``).
    UMAP's own ``transform`` starts from this and optimises further; on 2 cores it took minutes for 100k points."""
    k = min(k, len(fitted))
    f = np.asarray(fitted, np.float32)
    f_sq = (f * f).sum(axis=1)
    out = np.empty((len(points), 2), np.float32)
    chunks = range(0, len(points), PLACE_CHUNK)
    for s in progress(chunks, show_progress, desc="placing points", unit="chunk"):
        q = np.asarray(points[s:s + PLACE_CHUNK], np.float32)
        d2 = np.maximum((q * q).sum(axis=1)[:, None] + f_sq[None, :] - 2.0 * (q @ f.T), 0.0)
        nearest = np.argpartition(d2, k - 1, axis=1)[:, :k]
        d = np.sqrt(np.take_along_axis(d2, nearest, axis=1))
        w = 1.0 / (d + 1e-6)
        out[s:s + PLACE_CHUNK] = (fitted_xy[nearest] * w[:, :, None]).sum(axis=1) / w.sum(axis=1, keepdims=True)
    return out
