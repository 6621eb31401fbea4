"""Embed large collections on Ray (Ray Data): a pool of model actors writing resumable Parquet shards.

>>> from multimodal_embed.distributed import embed_dataset
>>> report = embed_dataset("photos/", "out/", model="nomic-embed-v1.5", num_actors=4, num_gpus_per_actor=0.5)

The input (a folder or glob of images, or a Parquet/JSONL of image paths/URLs or of texts) is listed once and cut
into shards of ``shard_rows`` consecutive rows. Ray Data maps the shards over a pool of actors
(``map_batches`` with a class: one model load per actor, CPU/GPU resources per actor); each actor decodes with
this project's robust loader, embeds, and writes ``part-NNNNN.parquet`` atomically with the columns
(id, path or text, vector, status, error). Bad items are rows with their error, never a failed job.

Resuming: each shard records (in its Parquet schema) a digest of the items it was made from (for local image files
also their size and modification time, so a file replaced under the same name is recomputed) and of the settings
(model, kind, task, first row); ``manifest.json`` in the output folder records the model request and the
listing. A re-run skips only shards whose recorded digest matches the current listing, recomputes the others
(a file added that sorts first shifts every shard: all are recomputed), removes shards past the new end, and
refuses an output folder made with another model, kind or task, or holding shards without a manifest. A
killed job loses at most the shards in flight. ``ImageIndex.add_embeddings`` ingests
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
from .index.shards import (
    SHARD_INPUT_KEY,
    read_shards,
    shard_input_digest,
    shard_input_of,
    shard_path,
    shard_table,
    write_parquet,
)

MANIFEST = "manifest.json"

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
    shards_recomputed: int = 0  # existing shards whose input changed
    shards_removed: int = 0  # shards past the end of a shorter listing


def list_inputs(source: str | os.PathLike, kind: str = "auto") -> tuple[str, list[str]]:
    """``(kind, items)``: image paths/URLs or texts, in a stable order (row ``i`` gets id ``i``)."""
    from .imagefiles import list_images

    src = os.fspath(source)
    path = Path(src).expanduser()
    if path.is_dir():
        return "images", list_images(path, utf8_only=True)  # the shards' path column is UTF-8 text
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
        for shard, start, items_json, digest in zip(batch["shard"], batch["start"], batch["items"], batch["input"]):
            items = json.loads(items_json)
            rows, errors = self.write_shard(int(shard), int(start), items, str(digest))
            out["shard"].append(int(shard))
            out["rows"].append(rows)
            out["errors"].append(errors)
        return {k: np.asarray(v) for k, v in out.items()}

    def write_shard(self, shard: int, start: int, items: list[str], digest: str) -> tuple[int, int]:
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
                      identity=self.identity, metadata={SHARD_INPUT_KEY: digest})
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
    out = Path(output)
    _check_writable(out)
    kind, items = list_inputs(source, kind)
    text_task = task if task is not None else ("search_document" if kind == "texts" else None)
    request = {"model": model, "model_kwargs": model_kwargs or {}, "kind": kind, "task": text_task}
    _check_manifest(out, request)
    starts = list(range(0, len(items), shard_rows))
    keyed = _with_file_stamps(kind, items)  # a file replaced under the same name changes its shard's digest
    digests = [shard_input_digest(keyed[s:s + shard_rows], {**request, "start": s}) for s in starts]
    todo, recomputed = [], 0
    for k, s in enumerate(starts):
        path = shard_path(out, k)
        if path.is_file() and shard_input_of(path) == digests[k]:
            continue
        recomputed += path.is_file()
        todo.append((k, s))
    stale = [p for p in out.glob("part-*.parquet") if (_shard_number(p) or 0) >= len(starts)]
    _write_manifest(out, request, shard_rows, starts, digests, len(items))
    for p in stale:  # past the end of a shorter listing: their rows would be read twice
        p.unlink()
    report = DistributedReport(len(starts), 0, len(starts) - len(todo), 0, 0, 0.0, shards_recomputed=recomputed,
                               shards_removed=len(stale))
    if recomputed or stale:
        logger.warning("%s: the input changed since the last run (or shards are damaged): recomputing %d shards, "
                       "removing %d",
                       out, recomputed, len(stale))
    if todo:
        if not ray.is_initialized():
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False,
                     include_dashboard=False, configure_logging=False)
        rows = [{"shard": k, "start": s, "items": json.dumps(items[s:s + shard_rows]), "input": digests[k]}
                for k, s in todo]
        ds = ray.data.from_items(rows, override_num_blocks=len(rows))
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


def _check_writable(out: Path) -> None:
    """Create the output folder and a file in it, or raise :class:`InvalidInputError` naming the folder: before the
    inputs are listed or Ray is started, rather than in the first actor to finish a shard."""
    import tempfile

    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise InvalidInputError(f"the output folder {out} is not writable: {exc.strerror or exc}") from None


def _with_file_stamps(kind: str, items: list[str]) -> list[str]:
    """What each item's shard digest covers: for a local image file, its path with its size and modification time
    (a file overwritten under the same name is recomputed on resume); URLs and texts as they are."""
    if kind != "images":
        return items
    out = []
    for item in items:
        if "://" in item:
            out.append(item)
            continue
        try:
            st = os.stat(item)
            out.append(f"{item}\x00{st.st_size}:{st.st_mtime_ns}")
        except OSError:
            out.append(f"{item}\x00missing")
    return out


def _shard_number(path: Path) -> int | None:
    try:
        return int(path.stem.split("-", 1)[1])
    except (IndexError, ValueError):
        return None


def _check_manifest(out: Path, request: dict[str, Any]) -> None:
    """Refuse an output folder made with other settings, or holding shards this module cannot vouch for."""
    manifest = out / MANIFEST
    has_shards = any(out.glob("part-*.parquet"))
    if not manifest.is_file():
        if has_shards:
            raise InvalidInputError(f"{out} holds shards but no {MANIFEST}, so what they were made from is unknown; "
                                    f"use an empty output folder (or remove the shards)")
        return
    try:
        recorded = json.loads(manifest.read_text(encoding="utf-8"))["request"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidInputError(f"{manifest} is damaged ({exc}); use an empty output folder") from None
    diff = sorted(k for k in request if recorded.get(k) != request[k])
    if diff and has_shards:
        raise InvalidInputError(
            f"{out} holds shards made with {', '.join(f'{k}={recorded.get(k)!r}' for k in diff)}; this run asks "
            f"for {', '.join(f'{k}={request[k]!r}' for k in diff)}. Use another output folder, or remove it")


def _write_manifest(out: Path, request: dict[str, Any], shard_rows: int, starts: list[int], digests: list[str],
                    rows: int) -> None:
    import tempfile

    body = {"version": 1, "request": request, "rows": rows, "shard_rows": shard_rows,
            "shards": [{"file": shard_path(out, k).name, "start": s, "input": d}
                       for k, (s, d) in enumerate(zip(starts, digests))]}
    fd, tmp = tempfile.mkstemp(prefix=".manifest.", suffix=".tmp", dir=str(out))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(body, fh, indent=1, sort_keys=True)
        os.replace(tmp, out / MANIFEST)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


__all__ = ["DistributedReport", "embed_dataset", "list_inputs", "read_shards"]
