"""Zero-shot image classification: prompt ensembles, cached label embeddings, calibrated probabilities.

>>> clf = ZeroShotClassifier(emb, labels=["cat", "dog", "car"], templates="openai-imagenet")
>>> clf.predict(["a.jpg"], top_k=2)  # [[Prediction(label='cat', probability=0.93, cosine=0.31), ...]]

Class embeddings follow open_clip's zero-shot classifier: every template filled with every label, embedded
(with the model's query prefix, ``search_query: `` for nomic), averaged per class and renormalised.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .encoders import as_batch
from .errors import InvalidInputError
from .images import ImageInput
from .templates import NAMED_TEMPLATES
from .vision import ImageFailure

logger = logging.getLogger(__name__)

# Models without a stored logit scale (nomic): CLIP's trained maximum, i.e. temperature 0.01. Fit a better one
# with ZeroShotClassifier.calibrate.
DEFAULT_LOGIT_SCALE = 100.0
# Multi-label scores for models without a stored bias: sigmoid(scale * (cos - 0.2)) until calibrated.
DEFAULT_MULTI_LABEL_THRESHOLD = 0.2

_MEMORY_CACHE: dict[str, dict[str, np.ndarray]] = {}
_CACHE_LOCK = threading.Lock()


@dataclass(frozen=True)
class Prediction:
    label: str
    probability: float
    cosine: float


@dataclass
class Evaluation:
    """What :meth:`ZeroShotClassifier.evaluate` returns."""

    top1: float
    top5: float
    per_class: dict[str, float]
    confusion: np.ndarray  # confusion[true, predicted], in ``classes`` order
    classes: list[str]
    n_images: int
    failures: list[Any] = field(default_factory=list)
    mean_per_class_recall: float = float("nan")  # the mean of per_class over the classes with images

    def to_dict(self) -> dict[str, Any]:
        return {"top1": self.top1, "top5": self.top5, "per_class": self.per_class,
                "mean_per_class_recall": self.mean_per_class_recall,
                "confusion": self.confusion.tolist(), "classes": self.classes, "n_images": self.n_images,
                "failures": [(f.item, f.reason) for f in self.failures]}


def resolve_templates(templates: str | Sequence[str]) -> tuple[str, ...]:
    if isinstance(templates, str):
        if templates in NAMED_TEMPLATES:
            return NAMED_TEMPLATES[templates]
        if "{}" not in templates:
            raise InvalidInputError(f"unknown template set {templates!r}; use one of {sorted(NAMED_TEMPLATES)} "
                                    f"or a list of format strings with '{{}}'")
        templates = [templates]
    out = list(templates)
    if not out:
        raise InvalidInputError("templates is empty")
    for i, t in enumerate(out):
        if not isinstance(t, str) or t.count("{}") != 1:
            raise InvalidInputError(f"template #{i} {t!r} must be a str with exactly one '{{}}' for the label")
        try:
            t.format("x")
        except (IndexError, KeyError, ValueError) as exc:
            raise InvalidInputError(f"template #{i} {t!r} is not a valid format string: {exc}") from None
    dupes = _repeated(out)
    if dupes:
        raise InvalidInputError(f"duplicate templates: {dupes}")
    return tuple(out)


def check_labels(labels: Sequence[str]) -> list[str]:
    if isinstance(labels, str):
        raise InvalidInputError("labels must be a list of str, not a single string")
    out = list(labels)
    if not out:
        raise InvalidInputError("labels is empty")
    for i, label in enumerate(out):
        if not isinstance(label, str) or not label.strip():
            raise InvalidInputError(f"label #{i} {label!r} must be a non-empty str")
    dupes = _repeated(out)
    if dupes:
        raise InvalidInputError(f"duplicate labels: {dupes}")
    return out


def _repeated(items: list[str]) -> list[str]:
    """The items that occur more than once, sorted: one counting pass (``list.count`` per item was quadratic)."""
    from collections import Counter

    return sorted(x for x, n in Counter(items).items() if n > 1)


def model_identity(embedder: Any) -> dict[str, Any]:
    """What label embeddings depend on: the text tower's part of :meth:`Embedder.identity` (a local folder
    identified by its weight files too), with the dtype and the query task."""
    identity = embedder.identity()
    text = identity.get("text") or {}
    name = text.get("name")
    if name and os.path.isdir(str(name)):  # a local folder: identify it by its weights too
        stamps = sorted((p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in Path(name).glob("*.safetensors"))
        name = f"{os.path.abspath(name)}:{stamps}"
    return {"family": identity.get("family"), "name": name, "revision": text.get("revision"),
            "dim": identity["dim"], "dtype": embedder.info.get("dtype"), "task": embedder.query_task}


def average_templates(prompt_vectors: np.ndarray, n_labels: int, n_templates: int) -> np.ndarray:
    """Class embeddings from prompt embeddings ordered label-major (every template of label 0, then label 1...):
    the mean per label, renormalised (open_clip's zero-shot classifier)."""
    per_class = np.asarray(prompt_vectors, dtype=np.float32).reshape(n_labels, n_templates, -1).mean(axis=1)
    return (per_class / np.linalg.norm(per_class, axis=1, keepdims=True)).astype(np.float32)


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=1, keepdims=True)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def label_cache_dir() -> Path:
    """Where label embeddings are cached by default: ``labels/`` in the package's cache folder."""
    from .defaults import cache_home

    return cache_home() / "labels"


class ZeroShotClassifier:
    """Zero-shot classification with any :class:`~multimodal_embed.Embedder` that has both towers.

    Args:
        embedder: the model.
        labels: class names (unique, non-empty).
        templates: ``"openai-imagenet"`` (80 prompts), ``"simple"``, ``"none"``, or a list of format strings.
        multi_label: independent per-label sigmoid scores instead of a softmax over labels.
        logit_scale / logit_bias: override the model's (nomic has none: ``DEFAULT_LOGIT_SCALE``).
        cache_dir: where label embeddings are also kept on disk, shared across processes: ``True`` for ``labels/``
            in the package's cache folder (``$MMEMBED_CACHE``, else ``~/.cache/multimodal_embed``; what
            ``mmembed classify`` uses), a folder, or ``None`` (default) for this process's memory only (servers and
            the demo: labels from requests never reach the disk).
        show_progress: tqdm bars on long work.
    """

    def __init__(
        self,
        embedder: Any,
        labels: Sequence[str],
        templates: str | Sequence[str] = "openai-imagenet",
        *,
        multi_label: bool = False,
        logit_scale: float | None = None,
        logit_bias: float | None = None,
        cache_dir: str | os.PathLike | bool | None = None,
        batch_size: int = 256,
        show_progress: bool | None = None,
    ):
        if embedder.text_encoder is None or embedder.vision_encoder is None:
            raise InvalidInputError("zero-shot classification needs an Embedder with both text and image towers")
        self.embedder = embedder
        self.templates = resolve_templates(templates)
        # what label embeddings depend on (model, revision, templates); fixed for the classifier's lifetime
        self.cache_key = self._cache_key(embedder, self.templates)
        self.multi_label = multi_label
        self.cache_dir = label_cache_dir() if cache_dir is True else Path(cache_dir).expanduser() if cache_dir else None
        self.batch_size = batch_size
        self.show_progress = show_progress
        scoring = embedder.scoring
        self.kind = "sigmoid" if multi_label or scoring.kind == "sigmoid" else "softmax"
        self.logit_scale = float(logit_scale if logit_scale is not None else
                                 scoring.logit_scale if scoring.logit_scale is not None else DEFAULT_LOGIT_SCALE)
        if logit_bias is not None:
            self.logit_bias = float(logit_bias)
        elif scoring.logit_bias is not None:
            self.logit_bias = float(scoring.logit_bias)
        else:
            self.logit_bias = -self.logit_scale * DEFAULT_MULTI_LABEL_THRESHOLD if self.kind == "sigmoid" else 0.0
        self.labels: list[str] = []
        self.class_embeddings = np.zeros((0, embedder.dim), dtype=np.float32)
        self.add_labels(labels)

    # -- label embeddings --------------------------------------------------------------------------------
    @staticmethod
    def _cache_key(embedder: Any, templates: tuple[str, ...]) -> str:
        key = json.dumps({"model": model_identity(embedder), "templates": templates}, sort_keys=True, default=str)
        return hashlib.sha256(key.encode()).hexdigest()[:32]

    def _cache_file(self) -> Path | None:
        return self.cache_dir / f"labels-{self.cache_key}.npz" if self.cache_dir is not None else None

    def _load_cache(self) -> dict[str, np.ndarray]:
        with _CACHE_LOCK:
            cache = _MEMORY_CACHE.setdefault(self.cache_key, {})
            path = self._cache_file()
            if path is not None and path.is_file():
                try:
                    with np.load(path, allow_pickle=False) as data:
                        labels, vectors = data["labels"].tolist(), np.asarray(data["vectors"], dtype=np.float32)
                    if vectors.ndim != 2 or len(labels) != len(vectors) or not all(isinstance(x, str) for x in labels):
                        raise ValueError("labels and vectors do not match")
                except Exception as exc:  # noqa: BLE001 - any damage: the cache is rebuilt, never trusted
                    logger.warning("ignoring the damaged label cache %s (%s); it will be rewritten", path, exc)
                    return cache
                for label, vec in zip(labels, vectors):
                    cache.setdefault(label, vec)
            return cache

    def _save_cache(self, cache: dict[str, np.ndarray]) -> None:
        path = self._cache_file()
        if path is None:
            return
        from .errors import MultimodalEmbedError
        from .imagefiles import write_atomic

        labels = sorted(cache)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, lambda fh: np.savez(fh, labels=np.array(labels, dtype=str),
                                                   vectors=np.stack([cache[k] for k in labels])))
        except (OSError, MultimodalEmbedError) as exc:  # a read-only or full cache folder costs the cache only
            logger.warning("label embeddings not cached in %s (%s)", path.parent, exc)

    def embed_labels(self, labels: Sequence[str]) -> np.ndarray:
        """Class embeddings for ``labels``: template average, renormalised. Uncached labels only are embedded,
        all in one batched pass."""
        labels = check_labels(labels)
        cache = self._load_cache()
        new = [lab for lab in labels if lab not in cache]
        if new:
            prompts = [t.format(lab) for lab in new for t in self.templates]
            vectors = self.embedder.embed_text(prompts, task=self.embedder.query_task, batch_size=self.batch_size,
                                               show_progress=self.show_progress)
            per_class = average_templates(vectors, len(new), len(self.templates))
            with _CACHE_LOCK:
                for lab, vec in zip(new, per_class.astype(np.float32)):
                    cache[lab] = vec
            self._save_cache(cache)
            logger.info("embedded %d new labels x %d templates", len(new), len(self.templates))
        return np.stack([cache[lab] for lab in labels]).astype(np.float32)

    def add_labels(self, labels: Sequence[str]) -> None:
        """Add classes; only labels never embedded before (for this model and templates) are embedded."""
        labels = check_labels(labels)
        clash = sorted(set(labels) & set(self.labels))
        if clash:
            raise InvalidInputError(f"labels already present: {clash}")
        self.class_embeddings = np.concatenate([self.class_embeddings, self.embed_labels(labels)])
        self.labels.extend(labels)

    # -- scoring -----------------------------------------------------------------------------------------
    def cosine(self, image_embeddings: np.ndarray) -> np.ndarray:
        """Raw cosine scores ``(n_images, n_labels)``."""
        return np.asarray(image_embeddings, dtype=np.float32) @ self.class_embeddings.T

    def probabilities_from_cosine(self, cos: np.ndarray) -> np.ndarray:
        logits = self.logit_scale * cos.astype(np.float64)
        if self.kind == "sigmoid":
            return _sigmoid(logits + self.logit_bias).astype(np.float32)
        return _softmax(logits).astype(np.float32)

    def probabilities(self, images: Sequence[ImageInput], *, batch_size: int = 32) -> np.ndarray:
        """``(n_images, n_labels)`` probabilities (softmax rows sum to 1; sigmoid scores are independent)."""
        return self.probabilities_from_cosine(self.cosine(self.embedder.embed_images(images, batch_size=batch_size,
                                                                                     show_progress=False)))

    def predict(self, images: Sequence[ImageInput], top_k: int = 5, *, batch_size: int = 32,
                on_error: str = "raise") -> list[list[Prediction] | None]:
        """Per image, the ``top_k`` labels with probability and cosine, best first.

        ``on_error="skip"`` keeps going past undecodable images: their entry is ``None`` (see the log).
        """
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise InvalidInputError(f"top_k must be a positive int, got {top_k!r}")
        if on_error not in ("raise", "skip"):
            raise InvalidInputError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        images = as_batch(images, "images")
        if on_error == "raise":
            vectors, indices = self.embedder.embed_images(images, batch_size=batch_size), list(range(len(images)))
        else:
            res = self.embedder.embed_images_with_errors(images, batch_size=batch_size)
            vectors, indices = res.vectors, res.indices
            for f in res.failures:  # the result holds only None for them: the reasons go to the log, once each
                logger.warning("zero-shot: %s could not be embedded: %s", f.item, f.reason)
        out: list[list[Prediction] | None] = [None] * len(images)
        for i, pred in zip(indices, self.predict_embeddings(vectors, top_k)):
            out[i] = pred
        return out

    def predict_embeddings(self, image_embeddings: np.ndarray, top_k: int = 5) -> list[list[Prediction]]:
        """:meth:`predict` for image embeddings already computed (unit rows from the same model)."""
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise InvalidInputError(f"top_k must be a positive int, got {top_k!r}")
        cos = self.cosine(image_embeddings)
        probs = self.probabilities_from_cosine(cos)
        k = min(top_k, len(self.labels))
        return [[Prediction(self.labels[j], float(probs[row, j]), float(cos[row, j]))
                 for j in np.argsort(-cos[row], kind="stable")[:k]] for row in range(len(cos))]

    # -- calibration ---------------------------------------------------------------------------------------
    def calibrate(self, images: Sequence[ImageInput] | np.ndarray, true_labels: Sequence[str]) -> float:
        """Fit the logit scale (and, in multi-label mode, the bias) by minimising the negative log-likelihood on
        labelled images; ``images`` may also be precomputed image embeddings. Returns the new scale."""
        if isinstance(images, np.ndarray) and images.ndim == 2:
            vectors = images.astype(np.float32)
        else:
            vectors = self.embedder.embed_images(images, show_progress=False)
        if len(true_labels) != len(vectors):
            raise InvalidInputError(f"{len(vectors)} images but {len(true_labels)} labels")
        index = {lab: j for j, lab in enumerate(self.labels)}
        unknown = sorted({lab for lab in true_labels if lab not in index})
        if unknown:
            raise InvalidInputError(f"true labels not among the classifier's labels: {unknown}")
        y = np.array([index[lab] for lab in true_labels])
        self.logit_scale, bias = fit_temperature(self.cosine(vectors), y, sigmoid=self.kind == "sigmoid",
                                                 init_scale=self.logit_scale, init_bias=self.logit_bias)
        if self.kind == "sigmoid":
            self.logit_bias = bias
        return self.logit_scale

    # -- evaluation ----------------------------------------------------------------------------------------
    def evaluate(self, image_folder: str | os.PathLike, *, label_map: dict[str, str] | None = None,
                 limit_per_class: int | None = None, batch_size: int = 32,
                 show_progress: bool | None = True) -> Evaluation:
        """Accuracy on an ImageFolder layout, read and scored as ``mmembed eval`` reads and scores it (one reader:
        :func:`~multimodal_embed.evaluation.datasets.read_image_folder`, images anywhere below each class folder;
        one scoring: :func:`~multimodal_embed.evaluation.metrics.classification_metrics`, top-5 not applicable (NaN)
        with 5 labels or fewer). A folder's label is ``label_map``'s entry for its name, else the name with ``_``
        read as a space (``golden_retriever``), or the name itself where the classifier has that label.
        Undecodable files are reported in ``failures`` and left out of the scores."""
        classes, class_ids, files, truth = self._class_folders(Path(image_folder), label_map or {}, limit_per_class)
        cos, kept, failures = self._cosines(files, batch_size, show_progress)
        return _score(cos, np.array([truth[i] for i in kept], dtype=int), classes, class_ids, failures)

    def _class_folders(self, root: Path, label_map: dict[str, str], limit_per_class: int | None
                       ) -> tuple[list[str], list[int], list[Path], list[int]]:
        """(class folder names, their label ids, image files, each file's label id)."""
        from .evaluation.datasets import folder_label, read_image_folder

        folders = read_image_folder(root, limit_per_class)
        if not folders:
            raise InvalidInputError(f"{root} has no class subfolders with images")
        index = {lab: j for j, lab in enumerate(self.labels)}

        def label(name: str) -> str:
            if name in label_map:
                return label_map[name]
            return name if folder_label(name) not in index and name in index else folder_label(name)

        missing = sorted({label(name) for name, _ in folders} - set(index))
        if missing:
            raise InvalidInputError(f"class folders without a label in the classifier: {missing}")
        classes = [name for name, _ in folders]
        class_ids = [index[label(name)] for name in classes]
        files: list[Path] = []
        truth: list[int] = []
        for (_, found), j in zip(folders, class_ids):
            files += [Path(f) for f in found]
            truth += [j] * len(found)
        return classes, class_ids, files, truth

    def _cosines(self, files: list[Path], batch_size: int, show_progress: bool | None
                 ) -> tuple[np.ndarray, list[int], list[ImageFailure]]:
        """Cosines to the labels for every file that decodes, the positions of those files, and the failures.

        One pass over all files, so decoding overlaps the model and the progress bar moves once per batch."""
        res = self.embedder.embed_images_with_errors(files, batch_size=batch_size, show_progress=show_progress)
        failures = [ImageFailure(f.index, str(files[f.index]), f.reason) for f in res.failures]
        cos = self.cosine(res.vectors) if len(res.indices) else np.zeros((0, len(self.labels)), np.float32)
        kept = list(res.indices)
        return cos, kept, failures


def _score(cos: np.ndarray, y: np.ndarray, classes: list[str], class_ids: list[int],
           failures: list[ImageFailure]) -> Evaluation:
    """Top-1 / top-5 accuracy and mean per-class recall exactly as ``mmembed eval`` computes them
    (:func:`~multimodal_embed.evaluation.metrics.classification_metrics`: top-5 NaN with 5 labels or fewer),
    per-class accuracy and the confusion matrix of cosines ``cos`` against truth ``y``."""
    from .evaluation.metrics import classification_metrics, rank_order

    metrics = classification_metrics(cos, y)
    predicted = rank_order(cos, 1)[:, 0] if len(y) else np.zeros(0, np.int64)
    top1 = predicted == y
    pos = {j: k for k, j in enumerate(class_ids)}
    confusion = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for t, p in zip(y, predicted):
        if p in pos:
            confusion[pos[t], pos[p]] += 1
    per_class = {c: float(top1[y == j].mean()) if (y == j).any() else float("nan")
                 for c, j in zip(classes, class_ids)}
    return Evaluation(top1=metrics["acc@1"], top5=metrics["acc@5"], per_class=per_class, confusion=confusion,
                      classes=classes, n_images=len(y), failures=failures,
                      mean_per_class_recall=metrics["mean_per_class_recall"])


def fit_temperature(cos: np.ndarray, y: np.ndarray, *, sigmoid: bool = False, init_scale: float = 100.0,
                    init_bias: float = 0.0, steps: int = 200) -> tuple[float, float]:
    """Minimise the NLL of ``softmax(scale * cos)`` (or BCE of ``sigmoid(scale * cos + bias)`` against one-hot
    targets) over ``log(scale)`` (and ``bias``) with L-BFGS. Returns ``(scale, bias)``."""
    import torch

    c = torch.as_tensor(cos, dtype=torch.float64)
    target = torch.as_tensor(y, dtype=torch.long)
    log_scale = torch.tensor(float(np.log(max(init_scale, 1e-3))), dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(float(init_bias), dtype=torch.float64, requires_grad=sigmoid)
    params = [log_scale, bias] if sigmoid else [log_scale]
    opt = torch.optim.LBFGS(params, lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")
    onehot = torch.nn.functional.one_hot(target, c.shape[1]).to(torch.float64)

    def closure():
        opt.zero_grad()
        logits = log_scale.exp() * c
        if sigmoid:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits + bias, onehot)
        else:
            loss = torch.nn.functional.cross_entropy(logits, target)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_scale.detach().exp()), float(bias.detach())
