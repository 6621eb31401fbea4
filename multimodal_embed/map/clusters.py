"""Clusters on a map, and their names, offline.

Clusters: scikit-learn's HDBSCAN on the 2-D layout (density clusters where the eye sees them; on 2-D points it
runs in seconds for 100k points, where HDBSCAN in hundreds of dimensions is quadratic). Points in no cluster get
``-1``.

Names: images by zero-shot (:class:`~multimodal_embed.ZeroShotClassifier`, so its probabilities, calibrated or
not, are the ones shown) over a vocabulary: a cluster takes the label with the highest mean probability over its
members, and is ``"unnamed"`` below ``min_probability``. Texts by their most characteristic terms (c-TF-IDF: term
frequency in the cluster against the term's frequency across clusters), or by the nearest of the user's labels.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InvalidInputError, MissingDependencyError

logger = logging.getLogger(__name__)

UNNAMED = "unnamed"
NAMING_SAMPLE = 2_000  # members per cluster scored for its name (a seeded sample of larger clusters)
MIN_PROBABILITY = 0.15  # mean zero-shot probability a cluster's best label needs, else "unnamed"
MIN_LABEL_COSINE = 0.25  # texts named by --labels: the centroid's cosine to the nearest label needs this
WORD = r"(?u)\b[^\W\d_]\w+\b"  # c-TF-IDF terms: words of 2+ characters starting with a letter (no bare numbers)


@dataclass
class Cluster:
    id: int
    size: int
    x: float  # where its label goes on the map: the medoid-ish centre (median of its members)
    y: float
    name: str = UNNAMED
    score: float = float("nan")  # the mean calibrated probability (images), cosine (text labels), or c-TF-IDF
    terms: list[str] = field(default_factory=list)
    alternatives: list[tuple[str, float]] = field(default_factory=list)  # the next best names with their scores

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "size": self.size, "x": self.x, "y": self.y, "name": self.name,
                "score": None if not np.isfinite(self.score) else round(float(self.score), 4), "terms": self.terms,
                "alternatives": [[n, round(float(s), 4)] for n, s in self.alternatives]}


def default_min_cluster_size(n: int) -> int:
    """HDBSCAN's ``min_cluster_size`` for ``n`` points: 0.5% of them, at least 5 (3 for tiny maps)."""
    return max(3 if n < 100 else 5, round(n * 0.005))


def find_clusters(xy: np.ndarray, *, min_cluster_size: int | None = None, min_samples: int | None = None) -> np.ndarray:
    """HDBSCAN cluster ids (``-1``: in no cluster) of the 2-D points ``xy``; deterministic."""
    n = len(xy)
    if n < 3:
        return np.full(n, -1 if n == 0 else 0, dtype=np.int32)
    try:
        from sklearn.cluster import HDBSCAN
    except ImportError as exc:
        raise MissingDependencyError("map clusters need scikit-learn >= 1.3: pip install 'multimodal-embed[map]'"
                                     ) from exc
    size = min_cluster_size or default_min_cluster_size(n)
    if size < 2:
        raise InvalidInputError(f"min_cluster_size must be at least 2, got {size}")
    labels = HDBSCAN(min_cluster_size=min(size, n), min_samples=min_samples, copy=True).fit_predict(
        np.asarray(xy, np.float64))
    return labels.astype(np.int32)


def _members(cluster_ids: np.ndarray) -> dict[int, np.ndarray]:
    order = np.argsort(cluster_ids, kind="stable")
    ids, starts = np.unique(cluster_ids[order], return_index=True)
    return {int(c): rows for c, rows in zip(ids, np.split(order, starts[1:])) if c >= 0}


def describe_clusters(xy: np.ndarray, cluster_ids: np.ndarray) -> list[Cluster]:
    """One :class:`Cluster` per id (noise left out), placed at the median of its members."""
    return [Cluster(c, len(rows), float(np.median(xy[rows, 0])), float(np.median(xy[rows, 1])))
            for c, rows in _members(cluster_ids).items()]


def _sample(rows: np.ndarray, seed: int) -> np.ndarray:
    if len(rows) <= NAMING_SAMPLE:
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, NAMING_SAMPLE, replace=False))


def name_image_clusters(clusters: list[Cluster], cluster_ids: np.ndarray, vectors: np.ndarray, classifier: Any, *,
                        min_probability: float = MIN_PROBABILITY, seed: int = 0) -> None:
    """Name each cluster by zero-shot with ``classifier`` (a :class:`~multimodal_embed.ZeroShotClassifier` over the
    vocabulary): the label with the highest mean probability over the cluster's members (its ``score``), or
    ``"unnamed"`` when that is below ``min_probability``. The two next best labels go to ``alternatives``."""
    members = _members(cluster_ids)
    for cl in clusters:
        rows = _sample(members[cl.id], seed + cl.id)
        probs = classifier.probabilities_from_cosine(classifier.cosine(vectors[rows])).mean(axis=0)
        best = np.argsort(-probs, kind="stable")[:3]
        cl.score = float(probs[best[0]])
        cl.name = classifier.labels[best[0]] if cl.score >= min_probability else UNNAMED
        cl.alternatives = [(classifier.labels[j], float(probs[j])) for j in best[1:]]


def name_text_clusters_by_labels(clusters: list[Cluster], cluster_ids: np.ndarray, vectors: np.ndarray,
                                 labels: Sequence[str], label_vectors: np.ndarray, *,
                                 min_cosine: float = MIN_LABEL_COSINE) -> None:
    """Name each cluster by the label whose vector is nearest its normalised centroid (``score``: the cosine), or
    ``"unnamed"`` below ``min_cosine``."""
    members = _members(cluster_ids)
    for cl in clusters:
        centroid = vectors[members[cl.id]].mean(axis=0)
        centroid /= max(float(np.linalg.norm(centroid)), 1e-12)
        cos = label_vectors @ centroid
        best = np.argsort(-cos, kind="stable")[:3]
        cl.score = float(cos[best[0]])
        cl.name = labels[best[0]] if cl.score >= min_cosine else UNNAMED
        cl.alternatives = [(labels[j], float(cos[j])) for j in best[1:]]


def name_text_clusters_by_terms(clusters: list[Cluster], cluster_ids: np.ndarray, texts: Sequence[str], *,
                                n_terms: int = 3, max_features: int = 50_000) -> None:
    """Name each cluster by its ``n_terms`` most characteristic words (c-TF-IDF, as BERTopic: the term's frequency
    in the cluster, normalised per cluster, times ``log(1 + mean words per cluster / the term's frequency over all
    clusters)``); English stop words and bare numbers are left out. A cluster with no word is ``"unnamed"``."""
    if not clusters:
        return
    try:
        from scipy import sparse
        from sklearn.feature_extraction.text import CountVectorizer
    except ImportError as exc:
        raise MissingDependencyError("naming text clusters needs scikit-learn: pip install 'multimodal-embed[map]'"
                                     ) from exc
    rows = np.flatnonzero(cluster_ids >= 0)
    index = {cl.id: k for k, cl in enumerate(clusters)}
    try:
        counts = CountVectorizer(stop_words="english", max_features=max_features, token_pattern=WORD).fit(
            [texts[i] for i in rows])
    except ValueError:  # nothing but stop words
        return
    vocab = counts.get_feature_names_out()
    docs = counts.transform([texts[i] for i in rows])
    which = sparse.csr_matrix((np.ones(len(rows)), ([index[int(cluster_ids[i])] for i in rows], np.arange(len(rows)))),
                              shape=(len(clusters), len(rows)))
    tf = np.asarray((which @ docs).todense(), dtype=np.float64)
    words = tf.sum(axis=1)
    avg = words.mean()
    idf = np.log(1.0 + avg / np.maximum(tf.sum(axis=0), 1.0))
    ctfidf = tf / np.maximum(words[:, None], 1.0) * idf
    for k, cl in enumerate(clusters):
        if words[k] == 0:
            continue
        top = [j for j in np.argsort(-ctfidf[k], kind="stable")[:n_terms] if ctfidf[k, j] > 0]
        cl.terms = [str(vocab[j]) for j in top]
        cl.name = ", ".join(cl.terms) if cl.terms else UNNAMED
        cl.score = float(ctfidf[k, top[0]]) if top else float("nan")


def imagenet_vocabulary() -> list[str]:
    """The 1,000 ImageNet class names (timm's descriptions, first synonym), duplicates dropped."""
    from ..models.aligned import imagenet_class_names

    return list(dict.fromkeys(imagenet_class_names()))
