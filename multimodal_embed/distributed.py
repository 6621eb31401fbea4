"""Embed large collections on Ray (Ray Data): a pool of model actors writing resumable Parquet shards.

>>> from multimodal_embed.distributed import embed_dataset
>>> report = embed_dataset("photos/", "out/", model="nomic-embed-v1.5", num_actors=4, num_gpus_per_actor=0.5)

The input (a folder or glob of images, or a Parquet/JSONL of image paths/URLs or of texts) is listed once and cut
into shards of ``shard_rows`` consecutive rows. Ray Data maps the shards over a pool of actors
(``map_batches`` with a class: one model load per actor, CPU/GPU resources per actor); each actor decodes with
this project's robust loader, embeds, and writes ``part-NNNNN.parquet`` atomically with the columns
(id, path or text, vector, status, error). Bad items are rows with their error, never a failed job. A re-run skips
shards already written, so a killed job loses at most the shards in flight. ``ImageIndex.add_embeddings`` ingests
the shards without re-embedding. Nothing here imports Ray until it is used (``pip install
'multimodal-embed[distributed]'``).
"""

from __future__ import annotations

import glob
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InvalidInputError, MissingDependencyError
from .shards import read_shards, shard_path, shard_table, write_parquet

logger = logging.getLogger(__name__)


@dataclass
class DistributedReport:
    shards_total: int
    shards_written: int
    shards_skipped: int
    rows: int
    errors: int
    seconds: float
    files: list[str] = field(default_factory=list)


def list_inputs(source: str | os.PathLike, kind: str = "auto") -> tuple[str, list[str]]:
    """``(kind, items)``: image paths/URLs or texts, in a stable order (row ``i`` gets id ``i``)."""
    from .imagefiles import list_images

    src = os.fspath(source)
    path = Path(src).expanduser()
    if path.is_dir():
        return "images", list_images(path)
    if path.suffix in (".parquet", ".jsonl", ".json") and path.is_file():
        return _items_of_rows(path, _read_rows(path), kind)
    matches = sorted(glob.glob(os.path.expanduser(src), recursive=True))
    if matches:
        return "images", [m for m in matches if os.path.isfile(m)]
    raise InvalidInputError(f"{src} is not a folder, glob, .parquet or .jsonl")


def _read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a .parquet or JSON-lines file."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _items_of_rows(path: Path, rows: list[dict[str, Any]], kind: str) -> tuple[str, list[str]]:
    """Texts (a ``text`` field) or images (``path``, ``url`` or ``image``; relative paths are taken from the
    file's folder)."""
    if not rows:
        return (kind if kind != "auto" else "texts"), []
    keys = set(rows[0])
    if kind in ("auto", "texts") and "text" in keys:
        return "texts", [str(r["text"]) for r in rows]
    for key in ("path", "url", "image"):
        if key in keys:
            base = path.parent
            return "images", [v if "://" in str(v) or os.path.isabs(str(v)) else str(base / str(v))
                              for v in (r[key] for r in rows)]
    raise InvalidInputError(f"{path}: rows need a 'text', 'path', 'url' or 'image' field (got {sorted(keys)})")


class _ShardActor:
    """One model per actor; each call embeds whole shards and writes them."""

    def __init__(self, model: str, kind: str, out_dir: str, batch_size: int, task: str | None,
                 model_kwargs: dict[str, Any]):
        from .embedder import Embedder

        self.embedder = Embedder.from_pretrained(model, **model_kwargs)
        self.kind, self.out_dir, self.batch_size, self.task = kind, Path(out_dir), batch_size, task
        self.identity = self.embedder.identity()

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, list] = {"shard": [], "rows": [], "errors": []}
        for shard, start, items_json in zip(batch["shard"], batch["start"], batch["items"]):
            items = json.loads(items_json)
            rows, errors = self.write_shard(int(shard), int(start), items)
            out["shard"].append(int(shard))
            out["rows"].append(rows)
            out["errors"].append(errors)
        return {k: np.asarray(v) for k, v in out.items()}

    def write_shard(self, shard: int, start: int, items: list[str]) -> tuple[int, int]:
        vectors = np.zeros((len(items), self.embedder.dim), dtype=np.float32)
        status = ["ok"] * len(items)
        error: list[str | None] = [None] * len(items)
        if self.kind == "texts":
            vectors[:] = self.embedder.embed_text(items, task=self.task, batch_size=self.batch_size,
                                                  show_progress=False)
        else:
            res = self.embedder.embed_images_with_errors(items, batch_size=self.batch_size, show_progress=False)
            vectors[res.indices] = res.vectors
            for f in res.failures:
                status[f.index], error[f.index] = "error", f.reason
        write_parquet(shard_table(start, self.kind, items, vectors, status, error), shard_path(self.out_dir, shard),
                      identity=self.identity)
        return len(items), status.count("error")


def embed_dataset(
    source: str | os.PathLike,
    output: str | os.PathLike,
    *,
    model: str,
    kind: str = "auto",
    address: str | None = None,
    num_actors: int = 2,
    num_cpus_per_actor: float = 1,
    num_gpus_per_actor: float = 0,
    batch_size: int = 32,
    shard_rows: int = 1000,
    task: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> DistributedReport:
    """Embed ``source`` on Ray into Parquet shards under ``output`` (see the module docstring).

    ``address``: a Ray cluster (``"auto"``, ``"ray://host:10001"``); ``None`` starts or joins a local instance.
    ``task`` defaults to ``search_document`` for texts with nomic models.
    """
    try:
        import ray
    except ImportError as exc:
        raise MissingDependencyError("embed_dataset needs Ray: pip install 'multimodal-embed[distributed]'") from exc
    t0 = time.perf_counter()
    kind, items = list_inputs(source, kind)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    starts = list(range(0, len(items), shard_rows))
    todo = [(k, s) for k, s in enumerate(starts) if not shard_path(out, k).is_file()]
    report = DistributedReport(len(starts), 0, len(starts) - len(todo), 0, 0, 0.0)
    if todo:
        if not ray.is_initialized():
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False,
                     include_dashboard=False, configure_logging=False)
        rows = [{"shard": k, "start": s, "items": json.dumps(items[s:s + shard_rows])} for k, s in todo]
        ds = ray.data.from_items(rows, override_num_blocks=len(rows))
        text_task = task if task is not None else ("search_document" if kind == "texts" else None)
        results = ds.map_batches(
            _ShardActor, batch_size=1, compute=ray.data.ActorPoolStrategy(size=num_actors), num_cpus=num_cpus_per_actor,
            num_gpus=num_gpus_per_actor or None,
            fn_constructor_kwargs={"model": model, "kind": kind, "out_dir": str(out), "batch_size": batch_size,
                                   "task": text_task, "model_kwargs": model_kwargs or {}},
        )
        for row in results.iter_rows():
            report.shards_written += 1
            report.rows += int(row["rows"])
            report.errors += int(row["errors"])
    report.files = sorted(str(p) for p in out.glob("part-*.parquet"))
    report.seconds = round(time.perf_counter() - t0, 2)
    logger.info("embed_dataset: %s", report)
    return report


__all__ = ["DistributedReport", "embed_dataset", "list_inputs", "read_shards"]
