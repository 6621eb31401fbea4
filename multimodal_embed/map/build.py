"""Build a map: layout, clusters, names, query placements and thumbnails for one :class:`MapSource`."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from .clusters import (
    UNNAMED,
    Cluster,
    describe_clusters,
    find_clusters,
    imagenet_vocabulary,
    name_image_clusters,
    name_text_clusters_by_labels,
    name_text_clusters_by_terms,
)
from .layout import FIT_POINTS, layout_2d
from .sources import MapSource
from .thumbs import THUMB_BUDGET_BYTES, THUMB_SIDE, make_thumbnails

logger = logging.getLogger(__name__)

MAX_POINTS = 200_000  # above this, a seeded uniform sample of the items is mapped (stated on the map)
QUERY_NEIGHBOURS = 10
MAP_TEMPLATES = "simple"  # 4 prompts a label: the 1,000 ImageNet names embed in seconds (80 prompts: minutes)


@dataclass
class QueryPlacement:
    text: str
    x: float
    y: float
    neighbours: list[int]  # rows of the map, best first
    scores: list[float]


@dataclass
class MapResult:
    """A built map. ``rows`` are the source's rows that are on it (all of them unless sampled); per point: ``xy``,
    ``cluster_ids`` (``-1``: none), ``thumbnails`` (JPEG bytes or ``None``) and ``errors`` (why an image could not
    be read: a grey point)."""

    kind: str
    items: list[str]
    ids: list[str]
    xy: np.ndarray
    cluster_ids: np.ndarray
    clusters: list[Cluster]
    layout_method: str
    layout_reason: str
    rows: np.ndarray
    total_items: int
    thumbnails: list[bytes | None] = field(default_factory=list)
    errors: list[str | None] = field(default_factory=list)
    queries: list[QueryPlacement] = field(default_factory=list)
    naming: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    title: str = "map"

    @property
    def labels(self) -> list[str]:
        """Each point's cluster name (``""`` for points in no cluster)."""
        names = {cl.id: cl.name for cl in self.clusters}
        return [names.get(int(c), "") for c in self.cluster_ids]

    @property
    def sampled(self) -> bool:
        return len(self.items) < self.total_items


def place_queries(vectors: np.ndarray, xy: np.ndarray, query_vectors: np.ndarray, texts: Sequence[str],
                  k: int = QUERY_NEIGHBOURS) -> list[QueryPlacement]:
    """Each query at the similarity-weighted mean position of its ``k`` nearest points (weights
    ``exp((s - s_max) / 0.05)``): where its neighbours are, for UMAP and PCA layouts alike."""
    from ..index.search import exact_search

    if len(vectors) == 0 or len(texts) == 0:
        return []
    scores, rows = exact_search(vectors, np.asarray(query_vectors, np.float32), min(k, len(vectors)))
    out = []
    for text, s, r in zip(texts, scores, rows):
        ok = r >= 0
        s, r = s[ok], r[ok]
        w = np.exp((s - s.max()) / 0.05)
        x, y = (xy[r] * w[:, None]).sum(axis=0) / w.sum()
        out.append(QueryPlacement(text, float(x), float(y), [int(i) for i in r], [float(v) for v in s]))
    return out


def build_map(source: MapSource, embedder: Any = None, *, labels: Sequence[str] | None = None,
              vocabulary: str | None = "imagenet", templates: str | Sequence[str] = MAP_TEMPLATES,
              classifier: Any = None, queries: Sequence[str] = (), seed: int = 0, layout: str = "auto",
              min_cluster_size: int | None = None, min_probability: float | None = None,
              max_points: int = MAX_POINTS, fit_points: int = FIT_POINTS, thumbnails: bool = True,
              thumb_side: int = THUMB_SIDE, thumb_budget_bytes: int = THUMB_BUDGET_BYTES,
              cache_dir: str | None = None, show_progress: bool | None = None) -> MapResult:
    """Lay out, cluster and name ``source``.

    Args:
        embedder: the model of the vectors; needed to name image clusters (zero-shot), to place ``queries`` and to
            name text clusters by ``labels``. Without it, image clusters stay unnamed and queries are refused.
        labels: the user's names, added to the ``vocabulary`` (images) or used alone (texts; without them texts
            are named by c-TF-IDF terms).
        vocabulary: ``"imagenet"`` (the 1,000 ImageNet class names) or ``None`` (``labels`` only), images only.
        templates: the zero-shot prompts (:class:`~multimodal_embed.ZeroShotClassifier`'s ``templates``).
        classifier: a ready (e.g. calibrated) ``ZeroShotClassifier`` to name image clusters with instead.
        queries: texts placed on the map (embedded now; the HTML's search box offers them).
        max_points: above this, a seeded uniform sample is mapped. ``fit_points``: see :func:`layout_2d`.
        thumbnails: make thumbnails of image files (``thumb_side`` pixels, ``thumb_budget_bytes`` in all).
    """
    timings: dict[str, float] = {}
    n_total = len(source.items)
    if n_total == 0:
        raise InvalidInputError(f"{source.name or 'the source'} has nothing to map")
    rows = np.arange(n_total)
    if n_total > max_points:
        rows = np.sort(np.random.default_rng(seed).choice(n_total, max_points, replace=False))
        logger.warning("map: %d items; mapping a seeded uniform sample of %d (max_points)", n_total, max_points)
    vectors = source.vectors[rows] if len(rows) < n_total else source.vectors
    items = [source.items[i] for i in rows]
    ids = [source.ids[i] for i in rows]

    t = time.perf_counter()
    lay = layout_2d(vectors, seed=seed, method=layout, fit_points=fit_points, show_progress=show_progress)
    timings["layout_s"] = time.perf_counter() - t

    t = time.perf_counter()
    cluster_ids = find_clusters(lay.xy, min_cluster_size=min_cluster_size)
    clusters = describe_clusters(lay.xy, cluster_ids)
    timings["clusters_s"] = time.perf_counter() - t

    t = time.perf_counter()
    naming = _name(source.kind, clusters, cluster_ids, vectors, items, embedder, labels, vocabulary, templates,
                   classifier, min_probability, cache_dir, seed)
    timings["naming_s"] = time.perf_counter() - t

    placed: list[QueryPlacement] = []
    if queries:
        if embedder is None or embedder.text_encoder is None:
            raise InvalidInputError("placing queries needs the model with its text tower")
        t = time.perf_counter()
        qv = embedder.embed_text(list(queries), task=embedder.query_task, show_progress=False)
        placed = place_queries(vectors, lay.xy, qv, list(queries))
        timings["queries_s"] = time.perf_counter() - t

    thumbs: list[bytes | None] = [None] * len(items)
    errors: list[str | None] = [None] * len(items)
    if source.kind == "image" and thumbnails:
        t = time.perf_counter()
        thumbs, errors = make_thumbnails(items, side=thumb_side, budget_bytes=thumb_budget_bytes, seed=seed,
                                         show_progress=show_progress)
        timings["thumbnails_s"] = time.perf_counter() - t
    return MapResult(source.kind, items, ids, lay.xy, cluster_ids, clusters, lay.method, lay.reason, rows, n_total,
                     thumbs, errors, placed, naming, timings, title=source.name or "map")


def _name(kind: str, clusters: list[Cluster], cluster_ids: np.ndarray, vectors: np.ndarray, items: list[str],
          embedder: Any, labels: Sequence[str] | None, vocabulary: str | None, templates: Any, classifier: Any,
          min_probability: float | None, cache_dir: str | None, seed: int) -> str:
    """Name ``clusters`` in place; returns how they were named (shown on the map)."""
    from .clusters import MIN_LABEL_COSINE, MIN_PROBABILITY

    if not clusters:
        return "no clusters"
    if kind == "text":
        if labels:
            if embedder is None:
                raise InvalidInputError("naming text clusters by labels needs the model")
            from ..zeroshot import check_labels

            names = check_labels(list(labels))
            lv = embedder.embed_text(names, task=embedder.query_task, show_progress=False)
            name_text_clusters_by_labels(clusters, cluster_ids, vectors, names, lv,
                                         min_cosine=MIN_LABEL_COSINE if min_probability is None else min_probability)
            return f"nearest of {len(names)} labels (cosine of the cluster centre)"
        name_text_clusters_by_terms(clusters, cluster_ids, items)
        return "most characteristic terms (c-TF-IDF)"
    if classifier is None:
        if embedder is None or embedder.text_encoder is None:
            logger.warning("map: no model with a text tower, so the image clusters are not named")
            return "unnamed: no model to name them with"
        if vocabulary not in (None, "imagenet"):
            raise InvalidInputError(f"vocabulary must be 'imagenet' or None, got {vocabulary!r}")
        vocab = (imagenet_vocabulary() if vocabulary == "imagenet" else []) + list(labels or [])
        vocab = list(dict.fromkeys(v.strip() for v in vocab if v and v.strip()))
        if not vocab:
            raise InvalidInputError("naming image clusters needs a vocabulary: labels, or vocabulary='imagenet'")
        from ..zeroshot import ZeroShotClassifier

        classifier = ZeroShotClassifier(embedder, vocab, templates=templates, cache_dir=cache_dir,
                                        show_progress=False)
    name_image_clusters(clusters, cluster_ids, vectors, classifier,
                        min_probability=MIN_PROBABILITY if min_probability is None else min_probability, seed=seed)
    return f"zero-shot over {len(classifier.labels)} labels (mean {classifier.kind} probability of the members)"


__all__ = ["UNNAMED", "MapResult", "QueryPlacement", "build_map", "place_queries"]
