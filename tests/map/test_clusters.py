"""Clusters (HDBSCAN on the layout) and their names: zero-shot for images, c-TF-IDF or labels for texts."""

from __future__ import annotations

import numpy as np
import pytest

from multimodal_embed.map.clusters import (
    UNNAMED,
    default_min_cluster_size,
    describe_clusters,
    find_clusters,
    imagenet_vocabulary,
    name_image_clusters,
    name_text_clusters_by_labels,
    name_text_clusters_by_terms,
)
from tests.map.conftest import KNOWN


def _groups(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.array([[0, 0], [10, 0], [0, 10]], float)
    y = np.repeat(np.arange(3), 30)
    return centres[y] + rng.normal(size=(90, 2)) * 0.5, y


def test_hdbscan_finds_the_separated_groups_deterministically():
    xy, y = _groups()
    ids = find_clusters(xy, min_cluster_size=5)
    assert np.array_equal(ids, find_clusters(xy, min_cluster_size=5))
    assert len(set(ids) - {-1}) == 3
    for c in set(ids) - {-1}:  # each cluster is one group
        assert len(set(y[ids == c])) == 1
    assert (ids >= 0).mean() > 0.9
    cl = describe_clusters(xy, ids)
    assert sorted(c.size for c in cl) == sorted(int((ids == c).sum()) for c in set(ids) - {-1})
    assert all(np.hypot(c.x - xy[ids == c.id, 0].mean(), c.y - xy[ids == c.id, 1].mean()) < 1 for c in cl)


def test_default_min_cluster_size_and_tiny_inputs():
    assert default_min_cluster_size(10) == 3 and default_min_cluster_size(10_000) == 50
    assert find_clusters(np.zeros((0, 2))).shape == (0,)
    assert list(find_clusters(np.zeros((2, 2)))) == [0, 0]


def test_text_clusters_are_named_by_their_characteristic_terms():
    texts = ["the cat sat on the mat", "a cat and a kitten", "cats purr, the cat sleeps",
             "stock markets fell", "the market and the stocks rallied", "bond markets and stock prices",
             "the the and of", "a an the"]
    ids = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    clusters = describe_clusters(np.zeros((8, 2)), ids)
    name_text_clusters_by_terms(clusters, ids, texts, n_terms=2)
    by_id = {c.id: c for c in clusters}
    assert by_id[0].terms[0] == "cat" and by_id[1].terms[0] in ("stock", "markets", "market")
    assert "cat" not in by_id[1].terms and "the" not in by_id[0].terms  # stop words never name a cluster
    assert by_id[2].name == UNNAMED  # stop words only


def test_text_clusters_by_nearest_label_and_unnamed_below_the_threshold():
    rng = np.random.default_rng(0)
    labels_v = np.eye(3, 8, dtype=np.float32)
    vectors = np.concatenate([labels_v[0] + rng.normal(size=(5, 8)) * 0.05, labels_v[2] + rng.normal(size=(5, 8)) * 0.05,
                              -labels_v.sum(0, keepdims=True) + rng.normal(size=(5, 8)) * 0.05]).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.repeat([0, 1, 2], 5)
    clusters = describe_clusters(np.zeros((15, 2)), ids)
    name_text_clusters_by_labels(clusters, ids, vectors, ["sport", "food", "music"], labels_v)
    assert [c.name for c in clusters] == ["sport", "music", UNNAMED]
    assert clusters[0].score > 0.9


def test_imagenet_vocabulary_has_unique_names():
    vocab = imagenet_vocabulary()
    assert len(vocab) == len(set(vocab)) > 990 and "tabby" in vocab and "goldfish" in vocab


@pytest.mark.slow  # the built-in model
def test_image_clusters_are_named_by_zero_shot_with_the_classifiers_probabilities(builtin, known_folder):
    from multimodal_embed import ZeroShotClassifier

    files = sorted(known_folder.rglob("*.jpg"))
    truth = [f.parent.name for f in files]
    vectors = builtin.embed_images(files, show_progress=False)
    ids = np.array([list(KNOWN).index(t) for t in truth], dtype=np.int32)  # the true groups as clusters
    clf = ZeroShotClassifier(builtin, list(KNOWN.values()) + ["car", "dog", "tree"], templates="simple")
    clusters = describe_clusters(np.zeros((len(files), 2)), ids)
    name_image_clusters(clusters, ids, vectors, clf)
    assert [c.name for c in clusters] == list(KNOWN.values())
    for c in clusters:  # the score is the classifier's own mean probability for the name
        probs = clf.probabilities_from_cosine(clf.cosine(vectors[ids == c.id]))
        assert c.score == pytest.approx(probs[:, clf.labels.index(c.name)].mean(), abs=1e-6)
    name_image_clusters(clusters, ids, vectors, clf, min_probability=1.01)
    assert {c.name for c in clusters} == {UNNAMED}
