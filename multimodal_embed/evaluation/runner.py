"""Run models over evaluation data sets: embeddings cached on disk, metrics per Matryoshka size, a report.

>>> report = evaluate(["photos/", "captions.jsonl", "beir-folder/"], ["minilm-efficientnet-lite0"], dims=[384])
>>> print(report.markdown()); report.plot("eval.png"); json.dumps(report.to_dict())

Embeddings are computed once per model tower at its full size and cached per item, keyed on the tower's identity,
the task prefix and the *contents* of the items (file bytes, texts): a second run, another ``--dim`` or another
metric embeds nothing again, a renamed or moved file is still a hit, and a changed file is a miss. The cache is one
SQLite file per tower; each chunk of new items is one transaction, so an interrupted run keeps whole chunks only
and the next run goes on from them. Smaller sizes are the full vector cut and renormalised (what
``dimensionality=`` does).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..encoders import truncate_unit
from ..errors import InvalidInputError, ModelNotFoundError
from . import metrics as M
from .datasets import CaptionData, ClassificationData, Dataset, ImageSet, TextRetrievalData, load_datasets

logger = logging.getLogger(__name__)

CHUNK = 256  # items embedded per call (one cache transaction, one progress-bar step)
QUERY_CHUNK = 256  # queries scored at a time in text retrieval
RECALL_KS = (1, 5, 10)
METRICS = {"zeroshot": ("acc@1", "acc@5", "mean_per_class_recall"),
           "image-text": tuple(f"{d}_R@{k}" for d in ("text_to_image", "image_to_text") for k in RECALL_KS),
           "text-retrieval": (f"nDCG@{M.NDCG_K}", f"MRR@{M.MRR_K}", f"R@{M.RECALL_K}")}
SHORT = {"mean_per_class_recall": "mean recall", **{f"{d}_R@{k}": f"{a} R@{k}" for d, a in
                                                    (("text_to_image", "t2i"), ("image_to_text", "i2t"))
                                                    for k in RECALL_KS}}


def default_cache_dir() -> Path:
    """``eval`` in the package's cache folder (:func:`multimodal_embed.defaults.cache_home`)."""
    from ..defaults import cache_home

    return cache_home() / "eval"


# -- the embedding cache ------------------------------------------------------------------------------------------
class EmbeddingCache:
    """Vectors by content in ``root`` (``None``: no cache): one SQLite file per model tower, one row per item
    (its content key -> the float32 vector, or the reason it could not be embedded). Each chunk of new items is one
    transaction, so an interrupted run keeps every finished chunk and nothing half-written."""

    def __init__(self, root: str | os.PathLike | None):
        self.root = Path(root).expanduser() if root is not None else None
        self.hits = self.misses = 0
        self._dbs: dict[str, Any] = {}

    def _db(self, tower: str) -> Any:
        if self.root is None:
            return None
        if tower not in self._dbs:
            import sqlite3

            path = self.root / f"{tower[:32]}.sqlite"
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(path, timeout=60)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, vector BLOB, reason TEXT)")
                db.commit()
            except (sqlite3.Error, OSError) as exc:  # damaged or unwritable: the run goes on without the cache
                logger.warning("not using the embedding cache %s: %s", path, exc)
                db = None
            self._dbs[tower] = db
        return self._dbs[tower]

    def get(self, tower: str, keys: Sequence[str], dim: int) -> dict[str, np.ndarray | str]:
        """The cached entries among ``keys``: a vector, or the reason the item failed."""
        db = self._db(tower)
        found: dict[str, np.ndarray | str] = {}
        if db is not None:
            import sqlite3

            unique = list(dict.fromkeys(keys))
            try:
                for i in range(0, len(unique), 500):
                    part = unique[i:i + 500]
                    rows = db.execute(f"SELECT key, vector, reason FROM vectors WHERE key IN "
                                      f"({','.join('?' * len(part))})", part).fetchall()
                    for key, blob, reason in rows:
                        if blob is not None and len(blob) == 4 * dim:
                            found[key] = np.frombuffer(blob, dtype=np.float32)
                        elif blob is None and reason:
                            found[key] = str(reason)
            except sqlite3.Error as exc:
                logger.warning("embedding cache unreadable (%s): embedding again", exc)
                found = {}
        self.hits += sum(1 for k in keys if k in found)
        self.misses += sum(1 for k in keys if k not in found)
        return found

    def put(self, tower: str, entries: dict[str, np.ndarray | str]) -> None:
        db = self._db(tower)
        if db is None or not entries:
            return
        import sqlite3

        rows = [(k, None, v) if isinstance(v, str) else (k, np.asarray(v, np.float32).tobytes(), None)
                for k, v in entries.items()]
        try:
            with db:
                db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?)", rows)
        except sqlite3.Error as exc:  # a full or read-only disk: the run goes on without caching
            logger.warning("cannot write the embedding cache: %s", exc)

    def close(self) -> None:
        for db in self._dbs.values():
            if db is not None:
                db.close()
        self._dbs.clear()


def _folder_stamp(name: Any) -> Any:
    """A local model folder's files (name, size, mtime), so retrained weights in the same folder are a miss."""
    text = str(name or "")
    if text.startswith("builtin:"):  # a model shipped in the package: its weights folder
        text = str(Path(__file__).resolve().parents[1] / "weights" / text.removeprefix("builtin:"))
    for scheme in ("open_clip:", "local-dir:", "hf:"):
        text = text.removeprefix(scheme)
    if not text or not os.path.isdir(text):
        return None
    folder = Path(text)
    return [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(folder.iterdir()) if f.is_file()]


def tower_key(embedder: Any, tower: str) -> str:
    """What a tower's vectors depend on: its name and revision (the model's name when the tower has none, and a
    local folder's file stamps), dtype and precision."""
    identity = embedder.identity()
    part = identity.get("text" if tower == "text" else "vision") or {}
    name = part.get("name") or identity.get("name")  # towers with a name of their own are shared across models
    payload = {"tower": tower, "family": identity.get("family"), "name": name, "revision": part.get("revision"),
               "dim": identity.get("dim"), "dtype": embedder.info.get("dtype"),
               "precision": embedder.info.get("precision"), "stamps": _folder_stamp(name)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _bar(total: int, desc: str, show: bool | None) -> Any:
    if show is False or (show is None and total < CHUNK):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="item")


def _embed_cached(keys: list[str], tower: str, dim: int, cache: EmbeddingCache, run: Any, desc: str,
                  show: bool | None) -> dict[str, np.ndarray | str]:
    """Vectors (or failure reasons) for ``keys``: from the cache, the others through ``run(positions)`` in chunks,
    each chunk stored as it is done. ``run`` returns ``{position: vector or reason}``."""
    found = cache.get(tower, keys, dim)
    todo = [i for i, k in enumerate(keys) if k not in found]
    todo = list({keys[i]: i for i in reversed(todo)}.values())[::-1]  # one position per distinct key
    bar = _bar(len(keys), desc, show)
    if bar is not None:
        bar.update(len(keys) - len(todo))
    for start in range(0, len(todo), CHUNK):
        part = todo[start:start + CHUNK]
        new = {keys[i]: v for i, v in run(part).items()}
        cache.put(tower, new)
        found.update(new)
        if bar is not None:
            bar.update(len(part))
    if bar is not None:
        bar.close()
    return found


def _text_key(task: str | None, text: str) -> str:
    return hashlib.sha256(f"{task}\0{text}".encode("utf-8", "surrogateescape")).hexdigest()


def embed_texts(embedder: Any, texts: Sequence[str], task: str | None, cache: EmbeddingCache, *,
                batch_size: int = 32, desc: str = "texts", show_progress: bool | None = None) -> np.ndarray:
    """Full-size vectors of ``texts`` with the ``task`` prefix (``None`` where the model has no such prefix)."""
    prefixes = getattr(embedder.text_encoder, "prefixes", {}) or {}
    task = task if task in prefixes else None
    keys = [_text_key(task, t) for t in texts]

    def run(positions: list[int]) -> dict[int, np.ndarray | str]:
        vectors = embedder.embed_text([texts[i] for i in positions], task=task, batch_size=batch_size,
                                      show_progress=False)
        return dict(zip(positions, vectors))

    found = _embed_cached(keys, tower_key(embedder, "text"), embedder.dim, cache, run, desc, show_progress)
    return np.stack([found[k] for k in keys]).astype(np.float32) if keys else np.zeros((0, embedder.dim), np.float32)


def embed_images(embedder: Any, images: ImageSet, cache: EmbeddingCache, *, batch_size: int = 32,
                 desc: str = "images", show_progress: bool | None = None
                 ) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """``(vectors, ok, reasons)``: full-size vectors (zero rows where not ok), which images embedded, and why each
    other one did not (unreadable files are not sent to the model). Cached by file content."""
    readable = [i for i, h in enumerate(images.hashes) if h is not None]
    keys = [str(images.hashes[i]) for i in readable]

    def run(positions: list[int]) -> dict[int, np.ndarray | str]:
        res = embedder.embed_images_with_errors([images.files[readable[p]] for p in positions],
                                                batch_size=batch_size, show_progress=False)
        out: dict[int, np.ndarray | str] = {positions[j]: v for j, v in zip(res.indices, res.vectors)}
        out.update({positions[f.index]: f.reason or "not embedded" for f in res.failures})
        return out

    found = _embed_cached(keys, tower_key(embedder, "image"), embedder.dim, cache, run, desc, show_progress)
    n = len(images.files)
    vectors = np.zeros((n, embedder.dim), np.float32)
    ok = np.zeros(n, bool)
    reasons: dict[int, str] = dict(images.errors)
    for i, key in zip(readable, keys):
        value = found[key]
        if isinstance(value, str):
            reasons[i] = value
        else:
            vectors[i], ok[i] = value, True
    return vectors, ok, reasons


# -- results -----------------------------------------------------------------------------------------------------
@dataclass
class EvalResult:
    """One model on one data set at one size."""

    dataset: str
    task: str
    model: str
    dim: int | None
    metrics: dict[str, float]
    counted: int  # items scored (images, or queries)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (item, reason) left out
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "task": self.task, "model": self.model, "dim": self.dim,
                "metrics": {k: _json_num(v) for k, v in self.metrics.items()}, "counted": self.counted,
                "failures": [{"item": i, "reason": r} for i, r in self.failures], "note": self.note}


def _json_num(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _cell(x: float | None) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


@dataclass
class EvalReport:
    results: list[EvalResult]
    settings: dict[str, Any]

    @property
    def failures(self) -> list[tuple[str, str]]:
        """Every item left out of some score, once, in order."""
        return list(dict.fromkeys(f for r in self.results for f in r.failures))

    def to_dict(self) -> dict[str, Any]:
        return {"settings": self.settings, "results": [r.to_dict() for r in self.results]}

    def markdown(self) -> str:
        """One Markdown table per data set: a row per model and size, a column per metric."""
        out: list[str] = []
        for ds in self.settings["datasets"]:
            rows = [r for r in self.results if r.dataset == ds["name"] and r.task == ds["task"]]
            names = METRICS[ds["task"]]
            size = ", ".join(f"{ds[k]} {k}" for k in ("images", "classes", "captions", "queries", "documents")
                             if k in ds)
            out.append(f"{ds['name']} ({ds['task']}; {size}; sha256 {ds['sha256'][:12]})\n")
            out.append("| model | dim | " + " | ".join(SHORT.get(m, m) for m in names) + " | counted | left out |")
            out.append("|---|---:|" + "---:|" * (len(names) + 2))
            for r in rows:
                cells = [_cell(r.metrics.get(m)) for m in names] if r.metrics else ["n/a"] * len(names)
                out.append(f"| {r.model} | {r.dim or '–'} | " + " | ".join(cells)
                           + f" | {r.counted} | {len(r.failures)} |")
            out.append("")
            notes = list(dict.fromkeys(f"- {r.model}: {r.note}" for r in rows if r.note))
            out += [*notes, ""] if notes else []
        return "\n".join(out)

    def plot(self, path: str | os.PathLike) -> None:
        """One panel per data set and metric, a bar per model (and size), saved to ``path`` (PNG, SVG, PDF)
        atomically (:func:`~multimodal_embed.imagefiles.write_atomic`)."""
        from ..imagefiles import write_atomic

        fmt = check_plot_output(path)
        import matplotlib.pyplot as plt

        panels = [(ds["name"], ds["task"], m) for ds in self.settings["datasets"] for m in METRICS[ds["task"]]]
        models = list(dict.fromkeys((r.model, r.dim) for r in self.results))
        colours = plt.get_cmap("tab10")
        cols = min(4, len(panels))
        rows = math.ceil(len(panels) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows + 0.6), squeeze=False)
        for ax, (name, task, metric) in zip(axes.flat, panels):
            values = []
            for model, dim in models:
                hit = [r for r in self.results if (r.dataset, r.task, r.model, r.dim) == (name, task, model, dim)]
                v = hit[0].metrics.get(metric) if hit and hit[0].metrics else None
                values.append(float("nan") if v is None else v)
            ax.bar(range(len(models)), np.nan_to_num(values), color=[colours(i % 10) for i in range(len(models))])
            for i, v in enumerate(values):
                ax.text(i, (0 if math.isnan(v) else v) + 0.01, "n/a" if math.isnan(v) else f"{v:.2f}",
                        ha="center", va="bottom", fontsize=7)
            ax.set_title(f"{name}: {SHORT.get(metric, metric)}", fontsize=9)
            ax.set_ylim(0, 1.1)
            ax.set_xticks([])
        for ax in list(axes.flat)[len(panels):]:
            ax.axis("off")
        handles = [plt.Rectangle((0, 0), 1, 1, color=colours(i % 10)) for i in range(len(models))]
        fig.legend(handles, [f"{m} @ {d}" if d else m for m, d in models], loc="lower center",
                   ncol=min(3, len(models)), fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, 0.04 * max(1, math.ceil(len(models) / 3)) + 0.02, 1, 1))
        try:
            write_atomic(path, lambda fh: fig.savefig(fh, format=fmt, dpi=110))
        finally:
            plt.close(fig)


PLOT_FORMATS = ("png", "svg", "pdf")


def check_plot_output(path: str | os.PathLike) -> str:
    """The format of a plot file ``path`` (its suffix), checked before any work: a writable output
    (:func:`~multimodal_embed.imagefiles.check_output_path`), a format in :data:`PLOT_FORMATS`, and matplotlib
    installed (:class:`~multimodal_embed.errors.MissingDependencyError` otherwise)."""
    from ..errors import MissingDependencyError
    from ..imagefiles import check_output_path, printable

    fmt = Path(os.fspath(path)).suffix.lower().lstrip(".")
    if fmt not in PLOT_FORMATS:
        raise InvalidInputError(f"{printable(path)}: a plot is written as {', '.join('.' + f for f in PLOT_FORMATS)};"
                                f" got {('.' + fmt) if fmt else 'no suffix'}")
    check_output_path(path)
    try:
        import matplotlib

        matplotlib.use("Agg")
    except ImportError as exc:
        raise MissingDependencyError("--plot needs matplotlib: pip install matplotlib") from exc
    return fmt


# -- evaluation ----------------------------------------------------------------------------------------------------
def _dims_for(embedder: Any, dims: Sequence[int] | None) -> tuple[list[int], list[int]]:
    """(sizes to evaluate, requested sizes this model cannot give): :meth:`Embedder.check_dimensionality`'s rule,
    so a model that is not Matryoshka gets its full size only."""
    full = int(embedder.dim)
    if not dims:
        return [full], []
    good, bad = [], []
    for d in dims:
        try:
            good.append(int(embedder.check_dimensionality(d)))
        except InvalidInputError:
            bad.append(d)
    return (list(dict.fromkeys(good)) or [full]), bad


def _templates(templates: str | Sequence[str]) -> tuple[str, ...]:
    from ..zeroshot import resolve_templates

    return resolve_templates(templates)


def _zeroshot(emb: Any, data: ClassificationData, dims: list[int], cache: EmbeddingCache, templates: tuple[str, ...],
              name: str, batch_size: int, show: bool | None) -> list[EvalResult]:
    from ..zeroshot import average_templates, check_labels

    check_labels(data.classes)
    vectors, ok, reasons = embed_images(emb, data.images, cache, batch_size=batch_size,
                                        desc=f"{name}: {data.name} images", show_progress=show)
    prompts = [t.format(c) for c in data.classes for t in templates]
    prompt_vectors = embed_texts(emb, prompts, emb.query_task, cache, batch_size=batch_size,
                                 desc=f"{name}: {data.name} labels", show_progress=show)
    y = np.asarray(data.labels)[ok]
    failures = [(data.images.files[i], reasons[i]) for i in sorted(reasons)]
    out = []
    for d in dims:
        classes = average_templates(truncate_unit(prompt_vectors, d), len(data.classes), len(templates))
        scores = truncate_unit(vectors[ok], d) @ classes.T
        out.append(EvalResult(data.name, data.task, name, d, M.classification_metrics(scores, y), int(ok.sum()),
                              failures))
    return out


def _image_text(emb: Any, data: CaptionData, dims: list[int], cache: EmbeddingCache, name: str, batch_size: int,
                show: bool | None) -> list[EvalResult]:
    vectors, ok, reasons = embed_images(emb, data.images, cache, batch_size=batch_size,
                                        desc=f"{name}: {data.name} images", show_progress=show)
    owner = np.asarray(data.caption_image)
    keep = ok[owner]  # captions of images that were not embedded are left out with them
    text = embed_texts(emb, [c for c, k in zip(data.captions, keep) if k], emb.query_task, cache,
                       batch_size=batch_size, desc=f"{name}: {data.name} captions", show_progress=show)
    new_index = np.cumsum(ok) - 1
    failures = [(data.images.files[i], reasons[i]) for i in sorted(reasons)]
    out = []
    for d in dims:
        scores = truncate_unit(text, d) @ truncate_unit(vectors[ok], d).T
        out.append(EvalResult(data.name, data.task, name, d, M.image_text_recall(scores, new_index[owner[keep]],
                                                                                  RECALL_KS), int(ok.sum()), failures))
    return out


def _text_retrieval(emb: Any, data: TextRetrievalData, dims: list[int], cache: EmbeddingCache, name: str,
                    batch_size: int, show: bool | None) -> list[EvalResult]:
    q = embed_texts(emb, data.queries, emb.query_task, cache, batch_size=batch_size,
                    desc=f"{name}: {data.name} queries", show_progress=show)
    docs = embed_texts(emb, data.docs, "search_document", cache, batch_size=batch_size,
                       desc=f"{name}: {data.name} documents", show_progress=show)
    no_relevant = sum(1 for j in data.qrels if not any(g >= 1 for g in j.values()))
    out = []
    for d in dims:
        dv = truncate_unit(docs, d)
        ranked: list[list[str]] = []
        for start in range(0, len(q), QUERY_CHUNK):
            top = M.rank_documents(truncate_unit(q[start:start + QUERY_CHUNK], d) @ dv.T, data.doc_ids, M.RECALL_K)
            ranked += [[data.doc_ids[j] for j in row] for row in top]
        per_query = M.retrieval_metrics(ranked, data.qrels)
        means = {k: float(np.mean(v)) if v else float("nan") for k, v in per_query.items()}
        note = f"{no_relevant} judged queries without a relevant document count as 0" if no_relevant else ""
        out.append(EvalResult(data.name, data.task, name, d, means, len(data.queries), [], note))
    return out


def evaluate_model(embedder: Any, datasets: Sequence[Dataset], *, name: str, dims: Sequence[int] | None = None,
                   cache: EmbeddingCache | None = None, templates: str | Sequence[str] = "openai-imagenet",
                   batch_size: int = 32, show_progress: bool | None = None) -> list[EvalResult]:
    """Every data set with one loaded model, at each size it supports."""
    cache = cache if cache is not None else EmbeddingCache(None)
    sizes, skipped = _dims_for(embedder, dims)
    note = f"sizes {skipped} skipped: not a Matryoshka model" if skipped else ""
    out: list[EvalResult] = []
    for data in datasets:
        need = ("text",) if data.task == "text-retrieval" else ("text", "image")
        missing = [m for m in need if m not in embedder.modalities]
        if missing:
            out += [EvalResult(data.name, data.task, name, d, {}, 0, [], f"no {'/'.join(missing)} tower")
                    for d in sizes]
            continue
        if data.task == "zeroshot":
            rows = _zeroshot(embedder, data, sizes, cache, _templates(templates), name, batch_size, show_progress)
        elif data.task == "image-text":
            rows = _image_text(embedder, data, sizes, cache, name, batch_size, show_progress)
        else:
            rows = _text_retrieval(embedder, data, sizes, cache, name, batch_size, show_progress)
        for r in rows:
            r.note = "; ".join(x for x in (r.note, note) if x)
        out += rows
    return out


def _model_settings(name: str, emb: Any) -> dict[str, Any]:
    identity = emb.identity()
    return {"name": name, "identity": identity,
            "revisions": {t: (identity.get(t) or {}).get("revision") for t in ("text", "vision")},
            "dtype": emb.info.get("dtype"), "device": str(emb.info.get("device")),
            "precision": emb.info.get("precision", "exact"), "dim": emb.dim}


def run_settings() -> dict[str, Any]:
    """The machine and library versions a report was made with."""
    import platform

    import torch

    from .. import __version__
    from ..precision import cpu_capability

    return {"cpu": cpu_capability().model, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "multimodal_embed": __version__}


def _load_model(model: Any, device: str | None, precision: str | None, n: int) -> tuple[str, Any]:
    """``(name, Embedder)`` of a model name or an already loaded Embedder."""
    if not isinstance(model, str):
        return str(model.info.get("name") or model.identity().get("name") or f"model {n + 1}"), model
    from ..embedder import Embedder

    kwargs: dict[str, Any] = {"device": device} if device else {}
    if precision not in (None, "exact"):
        kwargs["precision"] = precision
    return model, Embedder.from_pretrained(model, **kwargs)


def evaluate(data: Sequence[str | os.PathLike | Dataset], models: Sequence[Any], *, dims: Sequence[int] | None = None,
             task: str | None = None, templates: str | Sequence[str] = "openai-imagenet",
             cache_dir: str | os.PathLike | None = "default", batch_size: int = 32,
             show_progress: bool | None = None, split: str = "test", limit_per_class: int | None = None,
             image_root: str | os.PathLike | None = None, device: str | None = None,
             precision: str | None = None) -> EvalReport:
    """Evaluate ``models`` (names for :meth:`Embedder.from_pretrained`, or loaded Embedders) on ``data`` (paths,
    recognised by layout unless ``task`` forces one, or loaded data sets) at the sizes ``dims`` (default: full).

    ``cache_dir``: ``"default"`` (:func:`default_cache_dir`), a folder, or ``None`` for no cache. Items that
    cannot be read or decoded are left out of the scores and listed in each result's ``failures``."""
    if not models:
        raise InvalidInputError("evaluate: give at least one model")
    if not data:
        raise InvalidInputError("evaluate: give at least one data set")
    if dims is not None and any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims):
        raise InvalidInputError(f"dims must be positive ints, got {list(dims)}")
    templates_used = _templates(templates)
    t0 = time.perf_counter()
    datasets: list[Dataset] = []
    for d in data:
        if isinstance(d, (ClassificationData, CaptionData, TextRetrievalData)):
            datasets.append(d)
        else:
            datasets += load_datasets(d, task, split=split, limit_per_class=limit_per_class, image_root=image_root)
    names = [(d.name, d.task) for d in datasets]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InvalidInputError(f"two data sets with the same name and task: {dupes} (rename one)")
    # every model is loaded before the first embedding: one that cannot be (not downloaded, unknown) is said at once,
    # with its reason, not after the others ran; all of them missing is the error
    loaded: list[tuple[str, Any] | ModelNotFoundError] = []
    for model in models:
        try:
            loaded.append(_load_model(model, device, precision, len(loaded)))
        except ModelNotFoundError as exc:  # the other models are still compared
            logger.warning("model %s not loaded: %s", model, exc)
            loaded.append(exc)
    missing = [x for x in loaded if isinstance(x, ModelNotFoundError)]
    if len(missing) == len(models):
        raise missing[0]
    cache = EmbeddingCache(default_cache_dir() if cache_dir == "default" else cache_dir)
    results: list[EvalResult] = []
    model_settings = []
    try:
        for k, (model, entry) in enumerate(zip(models, loaded)):
            if isinstance(entry, ModelNotFoundError):
                model_settings.append({"name": str(model), "error": str(entry)})
                results += [EvalResult(d.name, d.task, str(model), None, {}, 0, [(f"model {model}", str(entry))],
                                       "not loaded") for d in datasets]
                continue
            name, emb = entry
            loaded[k] = None  # type: ignore[call-overload]  # this process holds the model only while it runs
            model_settings.append(_model_settings(name, emb))
            results += evaluate_model(emb, datasets, name=name, dims=dims, cache=cache, templates=templates_used,
                                      batch_size=batch_size, show_progress=show_progress)
            del emb
    finally:
        cache.close()
    settings = {"models": model_settings, "dims": list(dims) if dims else None,
                "datasets": [d.describe() for d in datasets], "templates": list(templates_used),
                "templates_name": templates if isinstance(templates, str) else None, "batch_size": batch_size,
                "cache_dir": str(cache.root) if cache.root else None, "cache_hits": cache.hits,  # items
                "cache_misses": cache.misses, "seconds": round(time.perf_counter() - t0, 2),
                "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **run_settings()}
    return EvalReport(results, settings)
