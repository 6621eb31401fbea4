"""Evaluation metrics on score matrices, defined as the reference tools define them.

- Zero-shot classification (CLIP_benchmark): acc@k = share of items whose true class is among the k best-scored
  classes; mean per-class recall = scikit-learn's ``balanced_accuracy_score`` of the argmax (the mean, over the
  classes that occur in the truth, of the share of their items predicted right). acc@5 is not applicable (NaN) with
  5 classes or fewer, where it is 1 whatever the model (CLIP_benchmark reports NaN below 5); the one definition,
  :data:`TOP5_MIN_CLASSES`, used by ``mmembed eval`` and ``ZeroShotClassifier.evaluate``.
- Recall@k, the one implementation (:func:`recall_at_k`): a query is found when an item of its label is among the k
  best; acc@k, image-text recall and the alignment trainer's held-out recall are all this.
- Image-text retrieval (CLIP_benchmark): recall@k per query is 1 when any relevant item is among the k best, else 0
  (text-to-image: a caption finds its image; image-to-text: an image finds any of its captions), averaged.
- Text retrieval (trec_eval / pytrec_eval, as BEIR reports it): nDCG@10 with the relevance grade as the gain,
  MRR@10, recall@100 (share of the judged relevant documents in the top 100); a relevant document has grade >= 1;
  queries judged but without any relevant document count as 0.

Ties: classes and images are ranked by score, equal scores by position (the first wins, as ``argmax`` does);
documents by score, equal scores by document id in *descending* string order (trec_eval's rule), so the numbers equal
pytrec_eval's on the same run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import InvalidInputError

NDCG_K, MRR_K, RECALL_K = 10, 10, 100
TOP5_MIN_CLASSES = 6  # acc@5 is reported from 6 classes on: with 5 or fewer every item is in the top 5


def rank_order(scores: np.ndarray, k: int | None = None) -> np.ndarray:
    """Column indices of each row, best score first, ties by position; the first ``k`` of them."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), axis=1, kind="stable")
    return order if k is None else order[:, :k]


def recall_at_k(scores: np.ndarray, query_labels: Sequence[Any], item_labels: Sequence[Any], ks: Sequence[int]
                ) -> dict[int, float]:
    """For each ``k``: the share of query rows of ``scores`` (queries x items) with at least one item whose label
    equals the query's label among their ``k`` best-scored items (``k`` capped at the number of items; ties by
    position). NaN for no queries."""
    scores = np.asarray(scores)
    queries, items = np.asarray(query_labels), np.asarray(item_labels)
    if scores.ndim != 2 or scores.shape != (len(queries), len(items)):
        raise InvalidInputError(f"scores {scores.shape} do not match {len(queries)} queries x {len(items)} items")
    if len(queries) == 0 or not ks:
        return {k: float("nan") for k in ks}
    top = rank_order(scores, min(max(ks), len(items)))
    match = items[top] == queries[:, None] if len(items) else np.zeros((len(queries), 0), bool)
    return {k: float(match[:, :k].any(axis=1).mean()) for k in ks}


def topk_accuracy(scores: np.ndarray, y: np.ndarray, k: int) -> float:
    """Share of rows of ``scores`` (items x classes) whose class ``y`` is among the ``k`` best (k capped at the
    number of classes). NaN for no rows."""
    return recall_at_k(scores, y, np.arange(np.shape(scores)[1]), [k])[k]


def mean_per_class_recall(predicted: np.ndarray, y: np.ndarray) -> float:
    """Mean over the classes present in ``y`` of the share of their items predicted as them (balanced accuracy)."""
    y, predicted = np.asarray(y), np.asarray(predicted)
    if len(y) == 0:
        return float("nan")
    return float(np.mean([(predicted[y == c] == c).mean() for c in np.unique(y)]))


def per_class_recall(predicted: np.ndarray, y: np.ndarray, n_classes: int) -> list[float]:
    """Recall of each class ``0..n_classes-1`` (NaN for a class with no items)."""
    y, predicted = np.asarray(y), np.asarray(predicted)
    return [float((predicted[y == c] == c).mean()) if (y == c).any() else float("nan") for c in range(n_classes)]


def classification_metrics(scores: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """``acc@1``, ``acc@5`` (NaN with 5 classes or fewer: :data:`TOP5_MIN_CLASSES`) and ``mean_per_class_recall`` of
    ``scores`` (items x classes) against the true class indices ``y``."""
    scores = np.asarray(scores)
    y = np.asarray(y, dtype=np.int64)
    if scores.ndim != 2 or len(scores) != len(y):
        raise InvalidInputError(f"scores {scores.shape} and labels ({len(y)},) do not match")
    n_classes = scores.shape[1]
    predicted = rank_order(scores, 1)[:, 0] if len(y) else np.zeros(0, np.int64)
    return {"acc@1": topk_accuracy(scores, y, 1),
            "acc@5": topk_accuracy(scores, y, 5) if n_classes >= TOP5_MIN_CLASSES else float("nan"),
            "mean_per_class_recall": mean_per_class_recall(predicted, y)}


def image_text_recall(scores: np.ndarray, caption_image: Sequence[int], ks: Sequence[int] = (1, 5, 10)
                      ) -> dict[str, float]:
    """``text_to_image_R@k`` and ``image_to_text_R@k`` from ``scores`` (captions x images): caption ``i`` belongs to
    image ``caption_image[i]``; an image counts as found when any of its captions is."""
    scores = np.asarray(scores)
    owner = np.asarray(caption_image, dtype=np.int64)
    if scores.ndim != 2 or len(owner) != len(scores):
        raise InvalidInputError(f"scores {scores.shape} and caption owners ({len(owner)},) do not match")
    n_captions, n_images = scores.shape
    if n_captions and (owner.min() < 0 or owner.max() >= n_images):
        raise InvalidInputError("a caption's image index is outside the image columns")
    if n_captions == 0:
        return {f"{d}_R@{k}": float("nan") for d in ("text_to_image", "image_to_text") for k in ks}
    t2i = recall_at_k(scores, owner, np.arange(n_images), ks)  # a caption finds its image
    i2t = recall_at_k(scores.T, np.arange(n_images), owner, ks)  # an image finds any of its captions
    return {**{f"text_to_image_R@{k}": t2i[k] for k in ks}, **{f"image_to_text_R@{k}": i2t[k] for k in ks}}


def rank_documents(scores: np.ndarray, doc_ids: Sequence[str], k: int = RECALL_K) -> np.ndarray:
    """The ``k`` best document indices per query row of ``scores`` (queries x documents), ties by descending
    document id (trec_eval's order)."""
    scores = np.asarray(scores)
    if scores.shape[1] != len(doc_ids):
        raise InvalidInputError(f"{scores.shape[1]} score columns but {len(doc_ids)} document ids")
    perm = np.array(sorted(range(len(doc_ids)), key=doc_ids.__getitem__, reverse=True), dtype=np.int64)
    return perm[rank_order(scores[:, perm], k)] if len(perm) else np.zeros((len(scores), 0), np.int64)


def retrieval_metrics(ranked: Sequence[Sequence[str]], qrels: Sequence[Mapping[str, int]],
                      ndcg_k: int = NDCG_K, mrr_k: int = MRR_K, recall_k: int = RECALL_K
                      ) -> dict[str, list[float]]:
    """Per query: ``nDCG@ndcg_k``, ``MRR@mrr_k`` and ``R@recall_k`` of the ranked document ids ``ranked[i]`` (best
    first) against the graded judgements ``qrels[i]`` (document id -> grade; grade >= 1 is relevant)."""
    if len(ranked) != len(qrels):
        raise InvalidInputError(f"{len(ranked)} rankings but {len(qrels)} judgement sets")
    discount = 1.0 / np.log2(np.arange(2, max(ndcg_k, 1) + 2))
    out: dict[str, list[float]] = {f"nDCG@{ndcg_k}": [], f"MRR@{mrr_k}": [], f"R@{recall_k}": []}
    for docs, judged in zip(ranked, qrels):
        grades = [int(judged.get(d, 0)) for d in docs]
        gains = np.array([max(g, 0) for g in grades[:ndcg_k]], dtype=np.float64)
        ideal = np.sort(np.array([g for g in judged.values() if g > 0], dtype=np.float64))[::-1][:ndcg_k]
        idcg = float((ideal * discount[: len(ideal)]).sum())
        out[f"nDCG@{ndcg_k}"].append(float((gains * discount[: len(gains)]).sum()) / idcg if idcg > 0 else 0.0)
        first = next((r for r, g in enumerate(grades[:mrr_k], 1) if g >= 1), None)
        out[f"MRR@{mrr_k}"].append(1.0 / first if first else 0.0)
        n_rel = sum(1 for g in judged.values() if g >= 1)
        out[f"R@{recall_k}"].append(sum(1 for g in grades[:recall_k] if g >= 1) / n_rel if n_rel else 0.0)
    return out
