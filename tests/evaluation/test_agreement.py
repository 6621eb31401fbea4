"""``ZeroShotClassifier.evaluate`` and ``mmembed eval`` agree (issue 37): one ImageFolder reader (images below each
class folder, ``_`` read as a space), one scoring path, one top-5 (not applicable with 5 classes or fewer), and one
recall@k under acc@k, image-text recall and the alignment trainer's held-out recall."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from multimodal_embed.cli import main
from multimodal_embed.evaluation import metrics as M
from multimodal_embed.evaluation.runner import evaluate
from multimodal_embed.zeroshot import ZeroShotClassifier
from tests.conftest import labelled_folder


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-9)


@pytest.mark.parametrize("classes", [("cat", "golden_retriever", "car"), ("cat", "dog", "car", "tree", "boat"),
                                     ("cat", "dog", "car", "tree", "boat", "sea_lion", "house")])
def test_classifier_evaluate_equals_mmembed_eval(clip, clip_folder, tmp_path, capsys, classes):
    root = labelled_folder(tmp_path / "photos", classes, per_class=3)
    nested = root / classes[0] / "more"  # images below a class folder count for it, in both
    nested.mkdir()
    for f in sorted((root / classes[1]).iterdir())[:2]:
        nested.joinpath(f.name).write_bytes(f.read_bytes())
    (root / "empty_class").mkdir()  # a class folder without images is no class, in both
    labels = [c.replace("_", " ") for c in classes]
    result = ZeroShotClassifier(clip, labels, templates="simple").evaluate(root, show_progress=False)
    api = evaluate([root], [clip], templates="simple", cache_dir=None, show_progress=False).results[0]
    assert main(["eval", str(root), "--model", f"hf:{clip_folder}", "--templates", "simple", "--no-cache", "-q",
                 "--json", str(tmp_path / "r.json")]) == 0
    cli = json.loads((tmp_path / "r.json").read_text())["results"][0]
    capsys.readouterr()
    assert result.n_images == api.counted == cli["counted"] == 3 * len(classes) + 2
    for ours, theirs in (("top1", "acc@1"), ("top5", "acc@5"), ("mean_per_class_recall", "mean_per_class_recall")):
        value = getattr(result, ours)
        assert _same(value, api.metrics[theirs]), (ours, value, api.metrics[theirs])
        assert _same(value, math.nan if cli["metrics"][theirs] is None else cli["metrics"][theirs])
    assert math.isnan(result.top5) == (len(classes) <= 5)


def test_classifier_keeps_labels_named_like_the_folders(clip, tmp_path):
    """A classifier built with the raw folder names (``golden_retriever``) still evaluates that folder."""
    root = labelled_folder(tmp_path / "photos", ("cat", "golden_retriever"), per_class=2)
    result = ZeroShotClassifier(clip, ["cat", "golden_retriever"], templates="simple").evaluate(root,
                                                                                               show_progress=False)
    assert result.n_images == 4


def test_one_recall_at_k():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(7, 9))
    y = rng.integers(0, 9, 7)
    for k in (1, 3, 5, 9, 20):  # acc@k is recall@k with each class its own label
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        assert M.topk_accuracy(scores, y, k) == pytest.approx((top == y[:, None]).any(1).mean())
    # image-text: caption i belongs to image owner[i]; an image without captions is never found
    owner = np.array([0, 0, 1, 2, 2, 2])
    s = rng.normal(size=(6, 4))
    r = M.image_text_recall(s, owner, (1, 2))
    for k in (1, 2):
        t2i = (np.argsort(-s, axis=1, kind="stable")[:, :k] == owner[:, None]).any(1).mean()
        i2t = np.mean([(owner[np.argsort(-s[:, j], kind="stable")[:k]] == j).any() for j in range(4)])
        assert r[f"text_to_image_R@{k}"] == pytest.approx(t2i) and r[f"image_to_text_R@{k}"] == pytest.approx(i2t)
    # the alignment trainer's held-out recall: a query caption finds any image with that caption
    from multimodal_embed.align import retrieval_metrics

    captions = ["a", "b", "a", "c"]
    images = np.eye(4, dtype=np.float32)
    vecs = {"a": np.array([0, 0, 1, 0], np.float32), "b": np.array([0, 1, 0, 0], np.float32),
            "c": np.array([0, 0, 0, 1], np.float32)}
    got = retrieval_metrics(images, captions, vecs)
    assert got == {"R@1": 1.0, "R@10": 1.0, "queries": 3}
    vecs["b"] = np.array([0, 0, 0, 1], np.float32)  # "b" now ranks image 3 ("c") first
    assert retrieval_metrics(images, captions, vecs)["R@1"] == pytest.approx(2 / 3)
    assert math.isnan(M.classification_metrics(scores[:, :5], np.minimum(y, 4))["acc@5"])  # 5 classes: n/a
    assert not math.isnan(M.classification_metrics(scores[:, :6], np.minimum(y, 5))["acc@5"])
