"""A persistent, incremental image index in SQLite (WAL): text-to-image and image-to-image search.

>>> index = ImageIndex.create("photos.mmindex", embedder)
>>> report = index.add_folder("~/Pictures")      # new, changed, moved and deleted files only
>>> hits = index.search("a dog on a beach", k=10)

One SQLite file holds the model identity, one row per file (path, size, mtime, SHA-256, size in pixels, status,
error) and one row per vector (float32 blob + CRC32). Every batch is one transaction, so killing the process at
any instant leaves a consistent index; a re-run finishes the job. Readers in other processes see committed rows
while indexing runs (WAL).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import re
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import wraps
from pathlib import Path
from typing import Any

import numpy as np

from .errors import IndexCorruptError, IndexMismatchError, InvalidInputError, MissingDependencyError
from .utils import PARQUET_MODEL_KEY, arrow_vectors, progress

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".gif", ".webp", ".bmp", ".dib", ".tif", ".tiff", ".avif",
    ".avifs", ".heic", ".heif", ".ico", ".jp2", ".j2k", ".ppm", ".pgm", ".pbm", ".pnm", ".psd", ".tga", ".pcx",
    ".sgi", ".dds", ".icns", ".im", ".qoi",
})
SEARCH_CHUNK_ROWS = 65536  # rows per matrix-product chunk: bounded extra memory per query batch

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    root TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    width INTEGER,
    height INTEGER,
    status TEXT NOT NULL CHECK (status IN ('ok', 'error')),
    error TEXT,
    indexed_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS files_sha256 ON files (sha256);
CREATE INDEX IF NOT EXISTS files_root ON files (root);
CREATE TABLE IF NOT EXISTS vectors (
    file_id INTEGER PRIMARY KEY REFERENCES files (id) ON DELETE CASCADE,
    vector BLOB NOT NULL,
    crc32 INTEGER NOT NULL
);
"""


@dataclass
class IndexReport:
    """What :meth:`ImageIndex.add_folder` did."""

    embedded: int = 0  # new or changed files whose vector was computed
    unchanged: int = 0
    moved: int = 0  # recognised by content hash: path updated, no embedding
    copied: int = 0  # same content as an indexed file: vector reused
    removed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason), this run
    skipped_outside: list[str] = field(default_factory=list)  # symlinks leaving the folder

    def __str__(self) -> str:
        return (f"embedded {self.embedded}, unchanged {self.unchanged}, moved {self.moved}, copied {self.copied}, "
                f"removed {self.removed}, failed {len(self.failed)}")


@dataclass(frozen=True)
class SearchHit:
    path: str
    score: float
    width: int | None
    height: int | None
    size: int
    mtime_ns: int
    sha256: str


# -- exact search ------------------------------------------------------------------------------------------
def exact_search(matrix: np.ndarray, queries: np.ndarray, k: int, *, chunk_rows: int = SEARCH_CHUNK_ROWS,
                 mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` inner products of each query against ``matrix`` rows: ``(scores, rows)``, each ``(m, k')``.

    A chunked matrix product: each chunk of ``chunk_rows`` rows is multiplied once for all queries and reduced
    with ``argpartition``; nothing of the size of ``matrix`` is copied. ``mask`` (bool per row) excludes rows.
    """
    queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    n, m = matrix.shape[0], queries.shape[0]
    k = max(0, min(k, n if mask is None else int(mask.sum())))
    best_s = np.full((m, 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((m, 0), dtype=np.int64)
    if k == 0:
        return best_s, best_i
    for start in range(0, n, chunk_rows):
        block = matrix[start:start + chunk_rows]
        scores = queries @ block.T  # (m, rows)
        if mask is not None:
            scores[:, ~mask[start:start + chunk_rows]] = -np.inf
        kk = min(k, scores.shape[1])
        part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
        cand_s = np.concatenate([best_s, np.take_along_axis(scores, part, 1)], axis=1)
        cand_i = np.concatenate([best_i, part + start], axis=1)
        keep = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, keep, 1), np.take_along_axis(cand_i, keep, 1)
    return best_s, best_i


# -- query mixes -------------------------------------------------------------------------------------------
_TERM_SPLIT = re.compile(r"\s+([+-])\s+")
_WEIGHT = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*:\s*(.+)$")


def parse_query(expr: str) -> list[tuple[float, str]]:
    """rclip-style mixes: ``"2:golden retriever + ./pool.jpg - fruit"`` -> ``[(2, ...), (1, ...), (-1, ...)]``."""
    parts = _TERM_SPLIT.split(expr.strip())
    terms: list[tuple[float, str]] = []
    sign = 1.0
    for i, part in enumerate(parts):
        if i % 2 == 1:
            sign = 1.0 if part == "+" else -1.0
            continue
        weight, text = 1.0, part.strip()
        m = _WEIGHT.match(text)
        if m:
            weight, text = float(m.group(1)), m.group(2).strip()
        if not text:
            raise InvalidInputError(f"empty term in query {expr!r}")
        terms.append((sign * weight, text))
    return terms


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _dims(path: str) -> tuple[int | None, int | None]:
    try:
        from PIL import Image

        with Image.open(path) as im:
            return im.size
    except Exception:  # noqa: BLE001 - the embedding step reports the real error
        return None, None


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _locked(method: Callable) -> Callable:
    @wraps(method)
    def wrapper(self: ImageIndex, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)

    return wrapper


class ImageIndex:
    """A persistent image index bound to one model (see the module docstring)."""

    def __init__(self, path: str | os.PathLike, conn: sqlite3.Connection, identity: dict[str, Any],
                 embedder: Any = None):
        self.path = Path(path)
        self.conn = conn
        self.identity = identity
        self.dim = int(identity["dim"])
        self._embedder = embedder
        self._cache: tuple[int, list[int], list[str], np.ndarray] | None = None
        self._lock = threading.RLock()

    # -- lifecycle -----------------------------------------------------------------------------------------
    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        # usable from other threads (e.g. a web server's workers); every use is serialised by the index's lock
        conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # durable against process crashes (WAL); FULL for power loss
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    @classmethod
    def create(cls, path: str | os.PathLike, embedder: Any, *, exist_ok: bool = False) -> ImageIndex:
        """A new index for ``embedder`` (which needs an image tower). ``exist_ok`` opens an existing one."""
        path = Path(path).expanduser()
        if path.exists():
            if exist_ok:
                return cls.open(path, embedder)
            raise InvalidInputError(f"{path} already exists (use ImageIndex.open, or exist_ok=True)")
        if embedder.vision_encoder is None:
            raise InvalidInputError("an image index needs an Embedder with an image tower")
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = cls._connect(path)
        identity = embedder.identity()
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT INTO meta VALUES ('schema_version', ?), ('model', ?), ('roots', '[]')",
                         (str(SCHEMA_VERSION), json.dumps(identity, sort_keys=True)))
        return cls(path, conn, identity, embedder)

    @classmethod
    def open(cls, path: str | os.PathLike, embedder: Any = None) -> ImageIndex:
        """Open an index. Without ``embedder`` the recorded model is loaded when a text or image query needs it;
        with one, it must be the model that built the index."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise InvalidInputError(f"{path} is not an image index (no such file)")
        conn = cls._connect(path)
        try:
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise IndexCorruptError(f"{path} is not a readable image index: {exc}") from None
        if int(meta.get("schema_version", -1)) != SCHEMA_VERSION:
            conn.close()
            raise IndexCorruptError(f"{path}: unsupported schema version {meta.get('schema_version')}")
        identity = json.loads(meta["model"])
        if embedder is not None:
            mine = embedder.identity()
            if mine != identity:
                conn.close()
                diff = sorted(k for k in set(mine) | set(identity) if mine.get(k) != identity.get(k))
                raise IndexMismatchError(
                    f"{path} was built with {identity.get('name') or identity.get('vision')} (dim "
                    f"{identity.get('dim')}); the given model differs in {diff}. Open it without a model to load "
                    f"the recorded one, or build a new index.")
        return cls(path, conn, identity, embedder)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> ImageIndex:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def embedder(self) -> Any:
        if self._embedder is None:
            from .embedder import Embedder

            logger.info("loading the index's model %s", self.identity)
            self._embedder = Embedder.from_identity(self.identity)
        return self._embedder

    @property
    def roots(self) -> list[str]:
        return json.loads(self.conn.execute("SELECT value FROM meta WHERE key = 'roots'").fetchone()[0])

    @_locked
    def __len__(self) -> int:
        return self.conn.execute("SELECT count(*) FROM files WHERE status = 'ok'").fetchone()[0]

    @_locked
    def failures(self) -> list[tuple[str, str]]:
        """Every file recorded as bad, with its reason."""
        return self.conn.execute("SELECT path, error FROM files WHERE status = 'error' ORDER BY path").fetchall()

    # -- indexing ------------------------------------------------------------------------------------------
    def _scan(self, root: str, follow_symlinks: bool, report: IndexReport) -> Iterator[tuple[str, os.stat_result]]:
        for dirpath, dirnames, filenames in os.walk(root, followlinks=follow_symlinks):
            dirnames.sort()
            if not follow_symlinks:  # do not descend into linked folders leaving the root
                dirnames[:] = [d for d in dirnames if _inside(os.path.realpath(os.path.join(dirpath, d)), root)]
            for name in sorted(filenames):
                if os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
                    continue
                path = os.path.join(dirpath, name)
                if not follow_symlinks and not _inside(os.path.realpath(path), root):
                    report.skipped_outside.append(path)
                    continue
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                yield path, st

    @_locked
    def add_folder(self, folder: str | os.PathLike, *, follow_symlinks: bool = False, batch_size: int = 32,
                   show_progress: bool | None = None) -> IndexReport:
        """Index the images under ``folder``: new and changed files are embedded, moved files (same content)
        re-pathed, deleted files removed, bad files recorded with their reason. Safe to interrupt and re-run."""
        root = os.path.realpath(os.path.expanduser(os.fspath(folder)))
        if not os.path.isdir(root):
            raise InvalidInputError(f"{folder} is not a folder")
        report = IndexReport()
        self._add_root(root)
        known = {row[0]: row for row in self.conn.execute(
            "SELECT path, id, size, mtime_ns, sha256, status FROM files WHERE root = ?", (root,))}
        seen: set[str] = set()
        todo: list[tuple[str, os.stat_result, str, tuple]] = []  # path, stat, sha, dims
        for path, st in self._scan(root, follow_symlinks, report):
            seen.add(path)
            row = known.get(path)
            if row is not None and row[2] == st.st_size and row[3] == st.st_mtime_ns:
                report.unchanged += 1
                continue
            sha = _sha256(path)
            if row is not None and row[4] == sha:  # touched, same content: refresh the stat, keep the result
                with self.conn:
                    self.conn.execute("BEGIN IMMEDIATE")
                    self.conn.execute("UPDATE files SET size = ?, mtime_ns = ? WHERE id = ?",
                                      (st.st_size, st.st_mtime_ns, row[1]))
                report.unchanged += 1
                continue
            todo.append((path, st, sha, _dims(path)))
        gone = {p for p in known if p not in seen}

        to_embed = []
        for path, st, sha, dims in todo:
            src = self.conn.execute(
                "SELECT f.id, f.path FROM files f JOIN vectors v ON v.file_id = f.id WHERE f.sha256 = ? "
                "AND f.status = 'ok' ORDER BY (f.path = ?) DESC LIMIT 1", (sha, path)).fetchone()
            if src is None or src[1] == path:
                to_embed.append((path, st, sha, dims))
                continue
            with self.conn:
                self.conn.execute("BEGIN IMMEDIATE")
                if src[1] in gone:  # moved: re-path the row, keep its vector
                    self.conn.execute("DELETE FROM files WHERE path = ?", (path,))
                    self.conn.execute("UPDATE files SET path = ?, root = ?, size = ?, mtime_ns = ?, indexed_at = ? "
                                      "WHERE id = ?", (path, root, st.st_size, st.st_mtime_ns, time.time(), src[0]))
                    gone.discard(src[1])
                    report.moved += 1
                else:  # a copy of an indexed file: reuse its vector
                    file_id = self._upsert(path, root, st, sha, dims, "ok", None)
                    self.conn.execute("INSERT OR REPLACE INTO vectors SELECT ?, vector, crc32 FROM vectors "
                                      "WHERE file_id = ?", (file_id, src[0]))
                    report.copied += 1
            self._cache = None
        if gone:
            with self.conn:
                self.conn.execute("BEGIN IMMEDIATE")
                self.conn.executemany("DELETE FROM files WHERE path = ?", [(p,) for p in sorted(gone)])
            report.removed = len(gone)
            self._cache = None

        batches = [to_embed[s:s + batch_size] for s in range(0, len(to_embed), batch_size)]
        encoder = self.embedder
        for batch in progress(batches, show_progress, desc="index images", unit="batch"):
            res = encoder.embed_images_with_errors([b[0] for b in batch], batch_size=batch_size,
                                                   show_progress=False)
            vectors = dict(zip(res.indices, res.vectors))
            reasons = {f.index: f.reason for f in res.failures}
            with self.conn:  # one transaction per batch: rows and vectors land together or not at all
                self.conn.execute("BEGIN IMMEDIATE")
                for j, (path, st, sha, dims) in enumerate(batch):
                    self._record(path, root, st, sha, dims, vectors.get(j), reasons.get(j, "unknown error"), report)
            self._cache = None
        if report.failed:
            logger.warning("%d files could not be indexed (first: %s: %s)", len(report.failed), *report.failed[0])
        logger.info("add_folder %s: %s", root, report)
        return report

    @_locked
    def add_embeddings(self, shards: str | os.PathLike, root: str | os.PathLike, *,
                       show_progress: bool | None = None) -> IndexReport:
        """Ingest Parquet shards written by :func:`multimodal_embed.distributed.embed_dataset` without
        re-embedding. The shards' model must be this index's model; only files under ``root`` are taken."""
        from .distributed import read_shards

        identity, table = read_shards(shards)
        if identity != self.identity:
            raise IndexMismatchError(f"the shards in {shards} were made by {identity.get('name') or identity}, "
                                     f"not by this index's model {self.identity.get('name') or self.identity}")
        if "path" not in table.column_names:
            raise InvalidInputError(f"{shards}: text shards cannot go into an image index")
        root_real = os.path.realpath(os.path.expanduser(os.fspath(root)))
        report = IndexReport()
        self._add_root(root_real)
        paths = table.column("path").to_pylist()
        vectors = table.column("vector").to_pylist()
        status = table.column("status").to_pylist()
        errors = table.column("error").to_pylist()
        batches = [range(s, min(s + 512, len(paths))) for s in range(0, len(paths), 512)]
        for batch in progress(batches, show_progress, desc="ingest shards", unit="batch"):
            with self.conn:
                self.conn.execute("BEGIN IMMEDIATE")
                for i in batch:
                    path = paths[i]
                    if not _inside(os.path.realpath(path), root_real) or not os.path.isfile(path):
                        report.skipped_outside.append(path)
                        continue
                    ok = status[i] == "ok" and vectors[i] is not None and len(vectors[i]) == self.dim
                    self._record(path, root_real, os.stat(path), _sha256(path), _dims(path),
                                 vectors[i] if ok else None, errors[i] or "no vector", report)
            self._cache = None
        return report

    def _add_root(self, root: str) -> None:
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            roots = self.roots
            if root not in roots:
                self.conn.execute("UPDATE meta SET value = ? WHERE key = 'roots'", (json.dumps(roots + [root]),))

    def _record(self, path: str, root: str, st: os.stat_result, sha: str, dims: tuple, vector: Any,
                error: str, report: IndexReport) -> None:
        """Inside the caller's transaction: the file row with its vector, or as bad with ``error``."""
        if vector is not None:
            file_id = self._upsert(path, root, st, sha, dims, "ok", None)
            blob = np.ascontiguousarray(vector, dtype=np.float32).tobytes()
            self.conn.execute("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?)", (file_id, blob, zlib.crc32(blob)))
            report.embedded += 1
        else:
            file_id = self._upsert(path, root, st, sha, dims, "error", error)
            self.conn.execute("DELETE FROM vectors WHERE file_id = ?", (file_id,))
            report.failed.append((path, error))

    def _upsert(self, path: str, root: str, st: os.stat_result, sha: str, dims: tuple, status: str,
                error: str | None) -> int:
        self.conn.execute(
            "INSERT INTO files (path, root, size, mtime_ns, sha256, width, height, status, error, indexed_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (path) DO UPDATE SET root = excluded.root, "
            "size = excluded.size, mtime_ns = excluded.mtime_ns, sha256 = excluded.sha256, width = excluded.width, "
            "height = excluded.height, status = excluded.status, error = excluded.error, "
            "indexed_at = excluded.indexed_at",
            (path, root, st.st_size, st.st_mtime_ns, sha, dims[0], dims[1], status, error, time.time()))
        return self.conn.execute("SELECT id FROM files WHERE path = ?", (path,)).fetchone()[0]

    # -- reading -------------------------------------------------------------------------------------------
    def _data_version(self) -> int:
        return self.conn.execute("PRAGMA data_version").fetchone()[0]

    @_locked
    def vectors(self) -> tuple[list[int], list[str], np.ndarray]:
        """(file ids, paths, ``(n, d)`` float32 matrix) of every indexed file; cached until the index changes."""
        version = self._data_version()
        if self._cache is not None and self._cache[0] == version:
            return self._cache[1], self._cache[2], self._cache[3]
        rows = self.conn.execute("SELECT f.id, f.path, v.vector, v.crc32 FROM files f JOIN vectors v "
                                 "ON v.file_id = f.id WHERE f.status = 'ok' ORDER BY f.id").fetchall()
        mat = np.empty((len(rows), self.dim), dtype=np.float32)
        for r, (_, path, blob, crc) in enumerate(rows):
            if len(blob) != 4 * self.dim or zlib.crc32(blob) != crc:
                raise IndexCorruptError(f"{self.path}: the vector of {path} fails its integrity check")
            mat[r] = np.frombuffer(blob, dtype=np.float32)
        ids, paths = [r[0] for r in rows], [r[1] for r in rows]
        self._cache = (version, ids, paths, mat)
        return ids, paths, mat

    def _term_vector(self, item: Any) -> np.ndarray:
        if isinstance(item, np.ndarray):
            v = item.astype(np.float32).reshape(-1)
            if v.shape[0] != self.dim:
                raise InvalidInputError(f"query vector has dimension {v.shape[0]}, the index {self.dim}")
        elif isinstance(item, str) and not (os.path.isfile(os.path.expanduser(item))
                                            or item.startswith(("http://", "https://"))):
            emb = self.embedder
            v = emb.embed_text([item], task=emb.query_task, show_progress=False)[0]
        else:
            v = self.embedder.embed_images([os.path.expanduser(item) if isinstance(item, str) else item],
                                           show_progress=False)[0]
        n = np.linalg.norm(v)
        return v / n if n > 0 else v

    @_locked
    def query_vector(self, query: Any) -> np.ndarray:
        """The unit query vector: text (with the model's query prefix), an image (path, PIL, bytes), a vector,
        a list of ``(weight, item)`` pairs, or an rclip-style mix string (``"2:dog + ./pool.jpg - fruit"``):
        the normalised weighted sum of the terms' unit vectors."""
        if isinstance(query, str) and _TERM_SPLIT.search(query) or isinstance(query, str) and _WEIGHT.match(query):
            terms: list[tuple[float, Any]] = list(parse_query(query))
        elif isinstance(query, (list, tuple)) and query and all(isinstance(t, tuple) and len(t) == 2 for t in query):
            terms = [(float(w), item) for w, item in query]
        else:
            terms = [(1.0, query)]
        total = sum(w * self._term_vector(item) for w, item in terms)
        n = np.linalg.norm(total)
        if n == 0:
            raise InvalidInputError("the query terms cancel out")
        return (total / n).astype(np.float32)

    def _ann(self, mat: np.ndarray, nprobe: int) -> Any:
        """A FAISS IVF-Flat (inner product) over the current vectors, rebuilt when the index changes."""
        try:
            import faiss
        except ImportError as exc:
            raise MissingDependencyError("ann=True needs FAISS: pip install 'multimodal-embed[ann]'") from exc
        version = self._cache[0] if self._cache else None
        cached = getattr(self, "_ann_cache", None)
        if cached is None or cached[0] != version:
            nlist = max(1, int(4 * np.sqrt(len(mat))))
            ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(self.dim), self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
            sample = mat if len(mat) <= 40 * nlist else mat[np.random.default_rng(0).choice(len(mat), 40 * nlist,
                                                                                             replace=False)]
            ivf.train(sample)
            ivf.add(mat)
            self._ann_cache = (version, ivf)
        ivf = self._ann_cache[1]
        ivf.nprobe = nprobe
        return ivf

    @_locked
    def search(self, query: Any, k: int = 10, *, min_score: float | None = None,
               path_filter: str | Callable[[str], bool] | None = None, ann: bool | None = False,
               nprobe: int = 32) -> list[SearchHit]:
        """The ``k`` best files for ``query`` (see :meth:`query_vector`), best first, with their metadata.

        ``min_score`` drops weaker hits; ``path_filter`` is a glob (``"*/animals/*"``) or a predicate on the path.
        ``ann=True`` uses a FAISS IVF index (the ``ann`` extra; approximate, see benchmarks/RESULTS.md for
        recall); ``ann=None`` uses it above 200,000 vectors when FAISS is installed. Exact search otherwise.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InvalidInputError(f"k must be a positive int, got {k!r}")
        q = self.query_vector(query)
        ids, paths, mat = self.vectors()
        mask = None
        if path_filter is not None:
            pred = path_filter if callable(path_filter) else (lambda p: fnmatch.fnmatch(p, path_filter))
            mask = np.fromiter((bool(pred(p)) for p in paths), dtype=bool, count=len(paths))
        if ann is None:
            import importlib.util

            ann = len(paths) > 200_000 and importlib.util.find_spec("faiss") is not None
        if ann and mask is None and len(paths):
            scores, rows = self._ann(mat, nprobe).search(q[None, :], min(k, len(paths)))
        else:
            scores, rows = exact_search(mat, q, k, mask=mask)
        hits = []
        for s, r in zip(scores[0], rows[0]):
            if r < 0 or not np.isfinite(s) or (min_score is not None and s < min_score):
                continue
            meta = self.conn.execute("SELECT path, width, height, size, mtime_ns, sha256 FROM files WHERE id = ?",
                                     (ids[r],)).fetchone()
            if meta is None:
                continue
            hits.append(SearchHit(meta[0], float(s), meta[1], meta[2], meta[3], meta[4], meta[5]))
        return hits

    @_locked
    def duplicates(self, threshold: float = 0.95) -> list[list[str]]:
        """Groups (size >= 2) of files whose vectors have cosine >= ``threshold`` (transitively)."""
        _, paths, mat = self.vectors()
        parent = list(range(len(paths)))

        def find(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for start in range(0, len(paths), 4096):
            sims = mat[start:start + 4096] @ mat.T
            rows, cols = np.nonzero(sims >= threshold)
            for a, b in zip(rows + start, cols):
                if a < b:
                    parent[find(a)] = find(b)
        groups: dict[int, list[str]] = {}
        for i, p in enumerate(paths):
            groups.setdefault(find(i), []).append(p)
        return sorted((sorted(g) for g in groups.values() if len(g) > 1), key=lambda g: g[0])

    @_locked
    def export(self, path: str | os.PathLike) -> Path:
        """Write every indexed file's metadata and vector to Parquet (pyarrow); returns the path."""
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise MissingDependencyError("export needs pyarrow: pip install pyarrow") from exc
        ids, paths, mat = self.vectors()
        meta = {r[0]: r for r in self.conn.execute(
            "SELECT id, size, mtime_ns, sha256, width, height FROM files WHERE status = 'ok'")}
        cols = list(zip(*(meta[i] for i in ids))) if ids else [[]] * 6
        vectors = arrow_vectors(mat, self.dim)
        table = pa.table({"path": pa.array(paths, pa.string()), "size": pa.array(cols[1], pa.int64()),
                          "mtime_ns": pa.array(cols[2], pa.int64()), "sha256": pa.array(cols[3], pa.string()),
                          "width": pa.array(cols[4], pa.int32()), "height": pa.array(cols[5], pa.int32()),
                          "vector": vectors})
        table = table.replace_schema_metadata({PARQUET_MODEL_KEY: json.dumps(self.identity)})
        out = Path(path)
        pq.write_table(table, str(out))
        return out
