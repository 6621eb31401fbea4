"""The metrics against independent implementations on the same scores: pytrec_eval (trec_eval) for nDCG@10, MRR@10
and recall@100, CLIP_benchmark's own functions for zero-shot accuracy, mean per-class recall and image-text recall.

Ties: trec_eval orders tied documents by descending id and pytrec_eval gets the raw tied scores. CLIP_benchmark
ranks with ``torch.topk``, which picks among tied scores in no documented order (on this CPU neither the first
nor the last index), so for top-k with ties it gets the same scores with ties broken by position (a tiny offset
that reorders nothing else): that is our documented rule, and ``argmax`` (mean per-class recall) follows it on the
raw tied scores.
"""

from __future__ import annotations

import numpy as np
import pytest

from multimodal_embed.evaluation import metrics as M

pytrec_eval = pytest.importorskip("pytrec_eval")
torch = pytest.importorskip("torch")
cb_cls = pytest.importorskip("clip_benchmark.metrics.zeroshot_classification")
cb_ret = pytest.importorskip("clip_benchmark.metrics.zeroshot_retrieval")


def _positional(scores: np.ndarray) -> torch.Tensor:
    """``scores`` with ties broken by position (earlier first), every other order kept."""
    s = np.asarray(scores, dtype=np.float64)
    distinct = np.diff(np.unique(s))
    step = (distinct.min() if len(distinct) else 1.0) / (4 * s.shape[1])
    return torch.tensor(s - step * np.arange(s.shape[1])[None, :], dtype=torch.float64)


def _cases(rng: np.random.Generator):
    """(scores, labels) pairs: continuous random scores, and scores from 3 values (many ties)."""
    for n, c in [(50, 10), (37, 5), (64, 7), (20, 100)]:
        yield rng.normal(size=(n, c)), rng.integers(0, c, n)
        yield rng.integers(0, 3, size=(n, c)).astype(np.float64), rng.integers(0, c, n)


def _scalar(x) -> float:
    return np.asarray(x).reshape(()).item()


def test_zero_shot_accuracy_equals_clip_benchmark(monkeypatch):
    # clip-benchmark 1.6.2's accuracy() ends in float() of a 1-element array, an error since numpy 2.4; its module
    # gets a float() that takes the one element, and its topk / eq / sum run as written.
    monkeypatch.setattr(cb_cls, "float", _scalar, raising=False)
    rng = np.random.default_rng(0)
    for scores, y in _cases(rng):
        ours = M.classification_metrics(scores, y)
        target = torch.tensor(y)
        acc1, acc5 = cb_cls.accuracy(_positional(scores), target, topk=(1, 5))
        pred = torch.tensor(scores).argmax(axis=1)  # raw ties: argmax takes the first, as we do
        assert ours["acc@1"] == pytest.approx(acc1, abs=1e-9)
        assert M.topk_accuracy(scores, y, 5) == pytest.approx(acc5, abs=1e-9)
        if scores.shape[1] > 5:
            assert ours["acc@5"] == pytest.approx(acc5, abs=1e-9)
        else:  # 5 classes or fewer: every item is in the top 5, so the package reports it as not applicable
            assert np.isnan(ours["acc@5"])
        assert ours["mean_per_class_recall"] == pytest.approx(cb_cls.balanced_accuracy_score(target, pred), abs=1e-9)


def test_zero_shot_hand_built():
    scores = np.array([[0.9, 0.1, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.1], [0.0, 0.0, 0.0]])
    y = np.array([0, 1, 1, 2])
    out = M.classification_metrics(scores, y)
    # row 1 ties 0.5/0.5: class 0 (the first) wins; row 3 all tied: class 0 wins, so the class-2 item is wrong
    assert out["acc@1"] == 0.5
    assert np.isnan(out["acc@5"])  # fewer than 5 classes, as CLIP_benchmark reports it
    assert out["mean_per_class_recall"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert M.topk_accuracy(scores, y, 2) == 0.75  # the all-tied row: classes 0 and 1 come first


def _clip_benchmark_recall(scores: torch.Tensor, positives: torch.Tensor, k: int) -> float:
    per_query = cb_ret.batchify(cb_ret.recall_at_k, scores, positives, 7, "cpu", k=k)
    return float((per_query > 0).double().mean())


def _caption_cases(rng: np.random.Generator):
    for n_images, n_captions in [(12, 30), (40, 40), (25, 60)]:
        owner = np.concatenate([np.arange(n_images), rng.integers(0, n_images, n_captions - n_images)])
        rng.shuffle(owner)
        yield rng.normal(size=(n_captions, n_images)), owner
        yield rng.integers(0, 4, size=(n_captions, n_images)).astype(np.float64), owner


def test_image_text_recall_equals_clip_benchmark():
    rng = np.random.default_rng(1)
    for scores, owner in _caption_cases(rng):
        ours = M.image_text_recall(scores, owner, ks=(1, 5, 10))
        positives = torch.zeros(scores.shape, dtype=torch.bool)
        positives[torch.arange(len(owner)), torch.tensor(owner)] = True
        for k in (1, 5, 10):
            t2i = _clip_benchmark_recall(_positional(scores), positives, k)
            i2t = _clip_benchmark_recall(_positional(scores.T), positives.T, k)
            assert ours[f"text_to_image_R@{k}"] == pytest.approx(t2i, abs=1e-9)
            assert ours[f"image_to_text_R@{k}"] == pytest.approx(i2t, abs=1e-9)


def test_image_text_hand_built():
    # 3 images; image 0 has captions 0 and 1, image 1 caption 2, image 2 caption 3
    scores = np.array([[0.1, 0.9, 0.0],   # caption 0 -> image 1 first: miss at 1, hit at 2
                       [0.8, 0.2, 0.0],   # caption 1 -> image 0: hit
                       [0.5, 0.5, 0.1],   # caption 2 ties images 0 and 1: image 0 first, miss at 1
                       [0.0, 0.0, 0.7]])  # caption 3 -> image 2: hit
    out = M.image_text_recall(scores, [0, 0, 1, 2], ks=(1, 2))
    assert out["text_to_image_R@1"] == 0.5 and out["text_to_image_R@2"] == 1.0
    # image 0's best caption is 1 (0.8): found; image 1's best is 0 (0.9), not its own; image 2's is 3
    assert out["image_to_text_R@1"] == pytest.approx(2 / 3) and out["image_to_text_R@2"] == 1.0


def _trec(scores: np.ndarray, doc_ids: list[str], query_ids: list[str], qrels: list[dict[str, int]]):
    run = {q: {d: float(s) for d, s in zip(doc_ids, row)} for q, row in zip(query_ids, scores)}
    judged = {q: j for q, j in zip(query_ids, qrels)}
    ev = pytrec_eval.RelevanceEvaluator(judged, {"ndcg_cut.10", "recip_rank", "recall.100"})
    res = ev.evaluate(run)
    rr = [res[q]["recip_rank"] for q in query_ids]
    return ([res[q]["ndcg_cut_10"] for q in query_ids], [r if r >= 0.1 else 0.0 for r in rr],  # MRR@10
            [res[q]["recall_100"] for q in query_ids])


def _retrieval_case(rng: np.random.Generator, n_docs: int, n_queries: int, tied: bool):
    doc_ids = [f"d{i}" for i in rng.permutation(n_docs)]  # d10 sorts before d9: string order matters
    query_ids = [f"q{i}" for i in range(n_queries)]
    qrels = []
    for i in range(n_queries):
        if i % 7 == 3:  # judged, nothing relevant
            qrels.append({doc_ids[j]: 0 for j in rng.choice(n_docs, 3, replace=False)})
            continue
        picked = rng.choice(n_docs, int(rng.integers(1, 15)), replace=False)
        qrels.append({doc_ids[j]: int(rng.integers(-1, 4)) for j in picked})
    scores = rng.integers(0, 5, size=(n_queries, n_docs)).astype(np.float32) if tied else \
        rng.normal(size=(n_queries, n_docs)).astype(np.float32)
    return scores, doc_ids, query_ids, qrels


@pytest.mark.parametrize("tied", [False, True])
def test_text_retrieval_equals_pytrec_eval(tied):
    rng = np.random.default_rng(2)
    for n_docs, n_queries in [(150, 40), (30, 20), (400, 15)]:
        scores, doc_ids, query_ids, qrels = _retrieval_case(rng, n_docs, n_queries, tied)
        top = M.rank_documents(scores, doc_ids, M.RECALL_K)
        ours = M.retrieval_metrics([[doc_ids[j] for j in row] for row in top], qrels)
        ndcg, mrr, recall = _trec(scores, doc_ids, query_ids, qrels)
        np.testing.assert_allclose(ours["nDCG@10"], ndcg, atol=1e-9, rtol=0)
        np.testing.assert_allclose(ours["MRR@10"], mrr, atol=1e-9, rtol=0)
        np.testing.assert_allclose(ours["R@100"], recall, atol=1e-9, rtol=0)
        assert any(r == 0 for r in ours["nDCG@10"])  # the queries without a relevant document are there, as 0


def test_text_retrieval_hand_built():
    doc_ids = ["a", "b", "c", "d"]
    scores = np.array([[1.0, 1.0, 1.0, 1.0]])  # all tied: trec_eval's order is d, c, b, a
    assert M.rank_documents(scores, doc_ids, 4).tolist() == [[3, 2, 1, 0]]
    out = M.retrieval_metrics([["d", "c", "b", "a"]], [{"a": 1, "b": 0, "c": 2}])
    ideal = 2 + 1 / np.log2(3)
    assert out["nDCG@10"][0] == pytest.approx((2 / np.log2(3) + 1 / np.log2(5)) / ideal, abs=1e-12)
    assert out["MRR@10"] == [0.5] and out["R@100"] == [1.0]
    assert M.retrieval_metrics([["x"] * 12 + ["a"]], [{"a": 1}])["MRR@10"] == [0.0]  # found at 13: past the cut
