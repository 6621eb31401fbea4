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
import functools
import json
import logging
import os
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import wraps
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import IndexAccessError, IndexCorruptError, IndexMismatchError, InvalidInputError, MissingDependencyError
from ..imagefiles import IMAGE_EXTENSIONS, inside, is_image_name, printable, utf8_name, utf8_text
from ..utils import AUTO_PROGRESS_MIN_STEPS, progress
from .scanning import KnownFile, PendingFile, file_dims, scan_changes, sha256_file
from .search import (
    SEARCH_CHUNK_ROWS,
    AnnCache,
    combine,
    duplicate_groups,
    exact_search,
    mix_terms,
    parse_query,
    use_ann,
)

logger = logging.getLogger(__name__)

# 2: ``files.failed_with`` (the software that recorded a failure). Version-1 files are migrated when opened.
SCHEMA_VERSION = 2
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
    indexed_at REAL NOT NULL,
    failed_with TEXT
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
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): every file failing after this run
    known_failed: int = 0  # of ``failed``: unchanged files that failed on an earlier run (reported, not retried)
    skipped_outside: list[str] = field(default_factory=list)  # symlinks leaving the folder
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): FIFOs, devices: never read

    def __str__(self) -> str:
        return (f"embedded {self.embedded}, unchanged {self.unchanged}, moved {self.moved}, copied {self.copied}, "
                f"removed {self.removed}, failed {len(self.failed)}"
                + (f" ({self.known_failed} known from earlier runs)" if self.known_failed else "")
                + (f", skipped {len(self.skipped)}" if self.skipped else ""))


@dataclass(frozen=True)
class SearchHit:
    path: str
    score: float
    width: int | None
    height: int | None
    size: int
    mtime_ns: int
    sha256: str


PATH_PREFIXES = ("/", "./", "../", "~", ".\\", "..\\")


def query_kind(term: str) -> str:
    """What a string query term is: ``"url"``, ``"path"`` or ``"text"``; the one rule :meth:`ImageIndex.search` uses.

    * ``http://`` / ``https://`` (any case) is a URL (fetched as an image); another ``scheme://`` raises
      :class:`InvalidInputError` (see :func:`multimodal_embed.images.source_kind`);
    * a path is *marked*: it starts with ``/``, ``./``, ``../`` or ``~``, or ends with an image extension; it must
      name an existing file (then it is an image), else :class:`InvalidInputError` says so (a typo in a path is
      not searched as text);
    * everything else is text, even when a file of that name exists (``red`` is the word red). Write ``./red``
      to search by such a file.
    """
    from ..images import source_kind

    if source_kind(term) == "url":
        return "url"
    if not (term.startswith(PATH_PREFIXES) or is_image_name(term)):
        return "text"
    path = os.path.expanduser(term)
    if os.path.isfile(path):
        return "path"
    what = "a folder, not an image file" if os.path.isdir(path) else "no such file"
    raise InvalidInputError(f"{printable(term)}: {what} (a query that looks like a path must name an image file; "
                            f"reword it to search for the words)")


def _locked(method: Callable) -> Callable:
    """Serialise on the index's lock, and report a damaged file as :class:`IndexCorruptError` naming it."""
    @wraps(method)
    def wrapper(self: ImageIndex, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            try:
                return method(self, *args, **kwargs)
            except sqlite3.DatabaseError as exc:
                raise _corrupt(self.path, exc) from None

    return wrapper


_SQLITE_MAGIC = b"SQLite format 3\x00"


def _db_path(path: str) -> str | bytes:
    """A path as the ``files`` table keeps it: text, or its exact bytes (a BLOB) when the name is not UTF-8."""
    return path if utf8_name(path) else os.fsencode(path)


def _os_path(value: str | bytes) -> str:
    """A stored path back as ``os`` names the file (undecodable bytes as surrogates: it opens the same file)."""
    return os.fsdecode(value) if isinstance(value, bytes) else value


@functools.lru_cache(maxsize=1)
def failure_stamp() -> str:
    """What recorded a failure (this package's and Pillow's versions). A known failure is reported again, not
    retried, while the file is unchanged and the stamp is the same; after an upgrade it is retried once."""
    from importlib.metadata import PackageNotFoundError, version

    from .. import __version__

    try:
        pillow = version("pillow")
    except PackageNotFoundError:  # pragma: no cover - Pillow is a dependency
        pillow = "?"
    return f"multimodal_embed {__version__}; Pillow {pillow}"


def _migrate(path: Path, conn: sqlite3.Connection) -> int:
    """Bring an older index file to :data:`SCHEMA_VERSION` in one transaction (all or nothing; a concurrent
    opener waits and then finds it done); returns the version the file has afterwards. A file that cannot be
    written (read-only) stays as it is and is read as it is."""
    try:
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            found = int(conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0])
            if found == 1:
                conn.execute("ALTER TABLE files ADD COLUMN failed_with TEXT")  # NULL: failures retried once
                conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
                logger.info("%s: index file migrated from schema 1 to %d", path, SCHEMA_VERSION)
                return SCHEMA_VERSION
            return found
    except sqlite3.OperationalError as exc:
        if "readonly" not in str(exc).lower():
            raise
        logger.info("%s: read-only index file of schema 1, read without migrating it", path)
        return 1


# SQLite result codes (and, before Python 3.11, message words) of a file that cannot be read or written, as opposed
# to a damaged one: the cause, said in words
_ACCESS_CAUSES = {
    "SQLITE_READONLY": "the index file or its folder is read-only (SQLite also writes -wal and -shm files beside it)",
    "SQLITE_FULL": "the disk is full",
    "SQLITE_IOERR": "a read or write failed (a full disk, a file size limit or a failing disk)",
    "SQLITE_CANTOPEN": "the file or its folder cannot be opened (permissions)",
    "SQLITE_PERM": "permission denied",
    "SQLITE_BUSY": "another process holds the index locked",
    "SQLITE_LOCKED": "another process holds the index locked",
}
_ACCESS_WORDS = {"readonly": "SQLITE_READONLY", "disk is full": "SQLITE_FULL", "disk i/o error": "SQLITE_IOERR",
                 "unable to open": "SQLITE_CANTOPEN", "locked": "SQLITE_LOCKED", "busy": "SQLITE_BUSY"}


def _corrupt(path: Path, exc: BaseException) -> Exception:
    """The package's error for a SQLite error on ``path``: :class:`IndexAccessError` when the file cannot be read or
    written (read-only, full disk, I/O error, locked), naming the index and the cause; else
    :class:`IndexCorruptError`."""
    text = str(exc).lower()
    code = getattr(exc, "sqlite_errorname", None) or next((c for w, c in _ACCESS_WORDS.items() if w in text), "")
    cause = next((words for prefix, words in _ACCESS_CAUSES.items() if code.startswith(prefix)), None)
    if isinstance(exc, sqlite3.OperationalError) and cause is not None:
        return IndexAccessError(f"cannot use the index {path}: {cause} ({exc}; {code}). Nothing was half-written: "
                                f"what was committed before is kept")
    return IndexCorruptError(f"{path} is damaged or not an image index: {exc}")


MAX_DIM = 65_536  # a recorded dimension above this is a damaged record, not a model


def _recorded_dim(identity: Any) -> int:
    """The model dimension of a recorded identity: an int from 1 to ``MAX_DIM``, else ``ValueError``."""
    dim = identity.get("dim") if isinstance(identity, dict) else None
    if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= MAX_DIM:
        raise ValueError(f"the model dimension {dim!r} is not an int from 1 to {MAX_DIM}")
    return dim


class ImageIndex:
    """A persistent image index bound to one model (see the module docstring)."""

    def __init__(self, path: str | os.PathLike, conn: sqlite3.Connection, identity: dict[str, Any],
                 embedder: Any = None):
        self.path = Path(path)
        self.conn = conn
        self.identity = identity
        self.dim = int(identity["dim"])
        self._embedder = embedder
        self._text_embedder: Any = None  # the text tower alone, for text queries before the model is needed
        self.schema_version = SCHEMA_VERSION
        self._cache: tuple[int, list[int], list[str], np.ndarray] | None = None
        self._ann = AnnCache()
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
        identity = embedder.identity()
        try:
            conn = cls._connect(path)
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute("INSERT INTO meta VALUES ('schema_version', ?), ('model', ?), ('roots', '[]')",
                             (str(SCHEMA_VERSION), json.dumps(identity, sort_keys=True)))
        except sqlite3.DatabaseError as exc:
            raise _corrupt(path, exc) from None
        return cls(path, conn, identity, embedder)

    @classmethod
    def open(cls, path: str | os.PathLike, embedder: Any = None) -> ImageIndex:
        """Open an index. Without ``embedder`` the recorded model is loaded when a text or image query needs it;
        with one, it must be the model that built the index.

        The file is checked before anything is written to it: a file that is not SQLite, a SQLite file that is
        not an image index (left untouched, not even switched to WAL), a damaged header, meta table or model
        record raise :class:`IndexCorruptError` naming the file."""
        path = Path(path).expanduser()
        if path.is_dir():
            raise InvalidInputError(f"{path} is a folder, not an index file: build one with `mmembed index "
                                    f"photos.mmindex {path}` and search that")
        if not path.is_file():
            raise InvalidInputError(f"{path} is not an image index (no such file)")
        try:
            with open(path, "rb") as fh:
                head = fh.read(len(_SQLITE_MAGIC))
        except OSError as exc:
            raise InvalidInputError(f"cannot read {path}: {exc.strerror or exc}") from None
        if head != _SQLITE_MAGIC:
            raise IndexCorruptError(f"{path} is not an image index (not a SQLite file, or its header is damaged)")
        meta = cls._read_meta(path)
        try:
            identity = json.loads(meta["model"])
            json.loads(meta["roots"])
            _recorded_dim(identity)
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise IndexCorruptError(f"{path}: the model record in its meta table is damaged ({exc!r})") from None
        try:
            conn = cls._connect(path)
            schema = _migrate(path, conn) if int(meta["schema_version"]) < SCHEMA_VERSION else SCHEMA_VERSION
        except sqlite3.DatabaseError as exc:
            raise _corrupt(path, exc) from None
        if embedder is not None:
            mine = embedder.identity()
            if mine != identity:
                conn.close()
                diff = sorted(k for k in set(mine) | set(identity) if mine.get(k) != identity.get(k))
                raise IndexMismatchError(
                    f"{path} was built with {identity.get('name') or identity.get('vision')} (dim "
                    f"{identity.get('dim')}); the given model differs in {diff}. Open it without a model to load "
                    f"the recorded one, or build a new index.")
        index = cls(path, conn, identity, embedder)
        index.schema_version = schema
        return index

    @staticmethod
    def _read_meta(path: Path) -> dict[str, str]:
        """The meta table, read through a read-only connection (nothing is written to a foreign file)."""
        try:
            ro = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30.0)
        except sqlite3.DatabaseError as exc:
            raise _corrupt(path, exc) from None
        try:
            tables = {r[0] for r in ro.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not {"meta", "files", "vectors"} <= tables:
                raise IndexCorruptError(f"{path} is a SQLite file but not an image index (tables: "
                                        f"{', '.join(sorted(tables)) or 'none'}); it was not modified")
            meta = dict(ro.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as exc:
            raise _corrupt(path, exc) from None
        finally:
            ro.close()
        version = str(meta.get("schema_version"))
        if version.isdigit() and int(version) > SCHEMA_VERSION:
            raise IndexCorruptError(f"{path}: schema version {version} was written by a newer multimodal_embed "
                                    f"(this one reads 1 to {SCHEMA_VERSION}); upgrade the package")
        if version not in {str(v) for v in range(1, SCHEMA_VERSION + 1)}:
            raise IndexCorruptError(f"{path}: unsupported or missing schema version {meta.get('schema_version')!r}")
        return meta

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> ImageIndex:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def embedder(self) -> Any:
        if self._embedder is None:
            from ..embedder import Embedder

            logger.info("loading the index's model %s", self.identity)
            self._embedder = Embedder.from_identity(self.identity)
        return self._embedder

    def _text_model(self) -> Any:
        """What embeds text queries: the model once loaded; before that, where the text tower loads alone
        (:meth:`Embedder.from_identity` ``text_only``), that tower only, so a text search (``mmembed search``)
        does not import and build the image tower."""
        if self._embedder is not None:
            return self._embedder
        if self._text_embedder is None:
            from ..embedder import Embedder

            if self.identity.get("family") not in ("aligned", "nomic"):  # one checkpoint for both towers
                return self.embedder
            logger.info("loading the text tower of the index's model %s", self.identity)
            self._text_embedder = Embedder.from_identity(self.identity, text_only=True)
        return self._text_embedder

    @property
    def roots(self) -> list[str]:
        """The real paths of the folders added to this index (as recorded in the file)."""
        try:
            roots = json.loads(self.conn.execute("SELECT value FROM meta WHERE key = 'roots'").fetchone()[0])
            if not isinstance(roots, list) or not all(isinstance(r, str) for r in roots):
                raise ValueError("not a list of paths")
        except sqlite3.DatabaseError as exc:
            raise _corrupt(self.path, exc) from None
        except (TypeError, ValueError) as exc:
            raise IndexCorruptError(f"{self.path}: the folder list in its meta table is damaged ({exc})") from None
        return roots

    @_locked
    def __len__(self) -> int:
        return self.conn.execute("SELECT count(*) FROM files WHERE status = 'ok'").fetchone()[0]

    @_locked
    def failures(self) -> list[tuple[str, str]]:
        """Every file recorded as bad, with its reason."""
        rows = self.conn.execute("SELECT path, error FROM files WHERE status = 'error' ORDER BY path").fetchall()
        return [(_os_path(path), error) for path, error in rows]

    # -- indexing ------------------------------------------------------------------------------------------
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
        changes = scan_changes(root, self._known(root), follow_symlinks=follow_symlinks,
                               on_outside=report.skipped_outside.append)
        report.unchanged += changes.unchanged
        report.skipped += changes.skipped
        report.failed += changes.failed + changes.known_failed
        report.known_failed = len(changes.known_failed)
        self._record_unreadable(root, changes.unreadable, report)
        self._refresh_stats(changes.touched)
        to_embed = self._reuse_vectors(root, changes.pending, changes.gone, report)
        self._remove(changes.gone, report)
        self._embed(root, to_embed, batch_size, show_progress, report)
        if report.failed:  # returned in the report: the caller reports each one, so only a debug line here
            logger.debug("%d files could not be indexed (first: %s: %s)", len(report.failed), *report.failed[0])
        logger.info("add_folder %s: %s", root, report)
        return report

    def _known(self, root: str) -> dict[str, KnownFile]:
        """What the index holds under ``root``; a failure recorded by other software (``failed_with``, see
        :func:`failure_stamp`) is marked to be retried."""
        stamp = failure_stamp()
        return {_os_path(path): KnownFile(file_id, size, mtime_ns, sha, error if status == "error" else None,
                                          status == "error" and failed_with != stamp)
                for path, file_id, size, mtime_ns, sha, status, error, failed_with in self.conn.execute(
                    "SELECT path, id, size, mtime_ns, sha256, status, error, failed_with FROM files WHERE root = ?",
                    (_db_path(root),))}

    def _record_unreadable(self, root: str, unreadable: list[tuple[str, os.stat_result, str]],
                           report: IndexReport) -> None:
        """Files that could not be read: recorded as failed with an empty hash, so the next run retries them."""
        if not unreadable:
            return
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            for path, st, reason in unreadable:
                self._record(path, root, st, "", (None, None), None, reason, report)
        self._cache = None

    def _refresh_stats(self, touched: list[tuple[int, os.stat_result]]) -> None:
        """Touched files (same content): record the new size and mtime, keep the result."""
        for file_id, st in touched:
            with self.conn:
                self.conn.execute("BEGIN IMMEDIATE")
                self.conn.execute("UPDATE files SET size = ?, mtime_ns = ? WHERE id = ?",
                                  (st.st_size, st.st_mtime_ns, file_id))

    def _reuse_vectors(self, root: str, pending: list[PendingFile], gone: set[str],
                       report: IndexReport) -> list[PendingFile]:
        """Moved files (content of a gone path) are re-pathed and copies take an indexed file's vector; returns
        the files left to embed. Paths re-pathed here are dropped from ``gone``."""
        to_embed = []
        for path, st, sha, dims in pending:
            src = self.conn.execute(
                "SELECT f.id, f.path FROM files f JOIN vectors v ON v.file_id = f.id WHERE f.sha256 = ? "
                "AND f.status = 'ok' ORDER BY (f.path = ?) DESC LIMIT 1", (sha, _db_path(path))).fetchone()
            if src is None or _os_path(src[1]) == path:
                to_embed.append(PendingFile(path, st, sha, dims))
                continue
            with self.conn:
                self.conn.execute("BEGIN IMMEDIATE")
                if _os_path(src[1]) in gone:  # moved: re-path the row, keep its vector
                    self.conn.execute("DELETE FROM files WHERE path = ?", (_db_path(path),))
                    self.conn.execute("UPDATE files SET path = ?, root = ?, size = ?, mtime_ns = ?, indexed_at = ? "
                                      "WHERE id = ?", (_db_path(path), _db_path(root), st.st_size, st.st_mtime_ns,
                                                       time.time(), src[0]))
                    gone.discard(_os_path(src[1]))
                    report.moved += 1
                else:  # a copy of an indexed file: reuse its vector
                    file_id = self._upsert(path, root, st, sha, dims, "ok", None)
                    self.conn.execute("INSERT OR REPLACE INTO vectors SELECT ?, vector, crc32 FROM vectors "
                                      "WHERE file_id = ?", (file_id, src[0]))
                    report.copied += 1
            self._cache = None
        return to_embed

    def _remove(self, gone: set[str], report: IndexReport) -> None:
        if not gone:
            return
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.executemany("DELETE FROM files WHERE path = ?", [(_db_path(p),) for p in sorted(gone)])
        report.removed = len(gone)
        self._cache = None

    def _embed(self, root: str, files: list[PendingFile], batch_size: int, show_progress: bool | None,
               report: IndexReport) -> None:
        """Embed ``files`` batch by batch; one transaction per batch, so rows and vectors land together."""
        batches = [files[s:s + batch_size] for s in range(0, len(files), batch_size)]
        encoder = self.embedder if batches else None  # a run with nothing to embed loads no model
        show = bool(batches) and (len(batches) >= AUTO_PROGRESS_MIN_STEPS if show_progress is None else show_progress)
        bar = progress(range(len(files)), show, desc="index images", unit="image")
        update = getattr(bar, "update", lambda n: None)  # counts images, not batches
        for batch in batches:
            res = encoder.embed_images_with_errors([b.path for b in batch], batch_size=batch_size,
                                                   show_progress=False)
            vectors = dict(zip(res.indices, res.vectors))
            reasons = {f.index: f.reason for f in res.failures}
            with self.conn:
                self.conn.execute("BEGIN IMMEDIATE")
                for j, (path, st, sha, dims) in enumerate(batch):
                    self._record(path, root, st, sha, dims, vectors.get(j), reasons.get(j, "unknown error"), report)
            self._cache = None
            update(len(batch))
        getattr(bar, "close", lambda: None)()

    @_locked
    def add_embeddings(self, shards: str | os.PathLike, root: str | os.PathLike, *,
                       show_progress: bool | None = None) -> IndexReport:
        """Ingest Parquet shards written by :func:`multimodal_embed.distributed.embed_dataset` without
        re-embedding. The shards' model must be this index's model; only files under ``root`` are taken."""
        from .shards import read_shards

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
                    if not inside(os.path.realpath(path), root_real) or not os.path.isfile(path):
                        report.skipped_outside.append(path)
                        continue
                    ok = status[i] == "ok" and vectors[i] is not None and len(vectors[i]) == self.dim
                    try:
                        st, sha = os.stat(path), sha256_file(path)  # only regular files are read
                    except OSError as exc:
                        report.failed.append((path, f"cannot read: {exc.strerror or exc}"))
                        continue
                    self._record(path, root_real, st, sha, file_dims(path), vectors[i] if ok else None,
                                 errors[i] or "no vector", report)
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
            if self.schema_version >= 2:
                self.conn.execute("UPDATE files SET failed_with = ? WHERE id = ?", (failure_stamp(), file_id))
            report.failed.append((path, error))

    def _upsert(self, path: str, root: str, st: os.stat_result, sha: str, dims: tuple, status: str,
                error: str | None) -> int:
        self.conn.execute(
            "INSERT INTO files (path, root, size, mtime_ns, sha256, width, height, status, error, indexed_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (path) DO UPDATE SET root = excluded.root, "
            "size = excluded.size, mtime_ns = excluded.mtime_ns, sha256 = excluded.sha256, width = excluded.width, "
            "height = excluded.height, status = excluded.status, error = excluded.error, "
            "indexed_at = excluded.indexed_at" + (", failed_with = NULL" if self.schema_version >= 2 else ""),
            (_db_path(path), _db_path(root), st.st_size, st.st_mtime_ns, sha, dims[0], dims[1], status, error,
             time.time()))
        return self.conn.execute("SELECT id FROM files WHERE path = ?", (_db_path(path),)).fetchone()[0]

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
                raise IndexCorruptError(f"{self.path}: the vector of {printable(_os_path(path))} fails its "
                                        "integrity check")
            mat[r] = np.frombuffer(blob, dtype=np.float32)
        ids, paths = [r[0] for r in rows], [_os_path(r[1]) for r in rows]
        self._cache = (version, ids, paths, mat)
        return ids, paths, mat

    def _term_vector(self, item: Any, texts_only: bool = False) -> np.ndarray:
        if isinstance(item, np.ndarray):
            v = item.astype(np.float32).reshape(-1)
            if v.shape[0] != self.dim:
                raise InvalidInputError(f"query vector has dimension {v.shape[0]}, the index {self.dim}")
            return v
        if isinstance(item, str) and (texts_only or query_kind(item) == "text"):
            emb = self._text_model()
            return emb.embed_text([item], task=emb.query_task, show_progress=False)[0]
        if isinstance(item, str) and query_kind(item) == "path":
            item = os.path.expanduser(item)
        return self.embedder.embed_images([item], show_progress=False)[0]

    @_locked
    def query_vector(self, query: Any, *, texts_only: bool = False) -> np.ndarray:
        """The unit query vector: text (with the model's query prefix), an image (path, PIL, bytes), a vector,
        a list of ``(weight, item)`` pairs, or an rclip-style mix string (``"2:dog + ./pool.jpg - fruit"``):
        the normalised weighted sum of the terms' unit vectors. Which strings are images: see
        :func:`query_kind`; ``texts_only=True`` makes every string text (what a server taking untrusted text
        should use: nothing is read or fetched)."""
        return combine(mix_terms(query), lambda item: self._term_vector(item, texts_only))

    @_locked
    def search(self, query: Any, k: int = 10, *, min_score: float | None = None,
               path_filter: str | Callable[[str], bool] | None = None, ann: bool | None = False,
               nprobe: int = 32, texts_only: bool = False, include_query: bool = False) -> list[SearchHit]:
        """The ``k`` best files for ``query`` (see :meth:`query_vector`), best first, with their metadata.

        ``min_score`` drops weaker hits; ``path_filter`` is a glob (``"*/animals/*"``) or a predicate on the path.
        An indexed file that is itself a query term (its path, or its exact bytes) is left out of the hits (it
        would come first at 1.0); ``include_query=True`` keeps it.
        ``ann=True`` uses a FAISS IVF index (the ``ann`` extra; approximate, see benchmarks/RESULTS.md for
        recall); ``ann=None`` uses it above 200,000 vectors when FAISS is installed. Exact search otherwise.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InvalidInputError(f"k must be a positive int, got {k!r}")
        q = self.query_vector(query, texts_only=texts_only)
        ids, paths, mat = self.vectors()
        own = set() if include_query else self._query_files(query, texts_only)
        k_own = k + len(own)  # room for the query's own files, dropped below
        mask = None
        if path_filter is not None:
            pred = path_filter if callable(path_filter) else (lambda p: fnmatch.fnmatch(p, path_filter))
            mask = np.fromiter((bool(pred(p)) for p in paths), dtype=bool, count=len(paths))
        if use_ann(ann, len(paths)) and mask is None and len(paths):
            ivf = self._ann.get(mat, self._cache[0] if self._cache else None, nprobe)
            scores, rows = ivf.search(q[None, :], min(k_own, len(paths)))
        else:
            scores, rows = exact_search(mat, q, k_own, mask=mask)
        hits = []
        for s, r in zip(scores[0], rows[0]):
            if r < 0 or not np.isfinite(s) or (min_score is not None and s < min_score) or paths[r] in own:
                continue
            meta = self.conn.execute("SELECT path, width, height, size, mtime_ns, sha256 FROM files WHERE id = ?",
                                     (ids[r],)).fetchone()
            if meta is None:
                continue
            hits.append(SearchHit(_os_path(meta[0]), float(s), meta[1], meta[2], meta[3], meta[4], meta[5]))
        return hits[:k]

    def _query_files(self, query: Any, texts_only: bool) -> set[str]:
        """The indexed paths a query names as image terms: a path (as given and resolved) or bytes (same SHA-256)."""
        own: set[str] = set()
        for _, item in mix_terms(query):
            if isinstance(item, str) and not texts_only and query_kind(item) == "path":
                p = os.path.expanduser(item)
                own |= {os.path.abspath(p), os.path.realpath(p)}
            elif isinstance(item, (bytes, bytearray)):
                import hashlib

                sha = hashlib.sha256(item).hexdigest()
                own |= {_os_path(r[0]) for r in self.conn.execute(
                    "SELECT path FROM files WHERE sha256 = ? AND status = 'ok'", (sha,))}
        return own

    @_locked
    def summary(self) -> dict[str, Any]:
        """What the index holds (``mmembed info``): its file, schema version, model, dimension, folders, how many
        images and failures, when it last changed, and its size on disk (the file and its WAL)."""
        images, failed, last = self.conn.execute(
            "SELECT sum(status = 'ok'), sum(status = 'error'), max(indexed_at) FROM files").fetchone()
        size = sum(os.path.getsize(p) for p in (self.path, Path(f"{self.path}-wal")) if os.path.exists(p))
        return {"path": str(self.path), "schema_version": self.schema_version, "model": self.identity,
                "dim": self.dim, "folders": self.roots, "images": int(images or 0), "failed": int(failed or 0),
                "last_indexed": last, "bytes": size}

    @_locked
    def duplicates(self, threshold: float = 0.95) -> list[list[str]]:
        """Groups (size >= 2) of files whose vectors have cosine >= ``threshold`` (transitively)."""
        _, paths, mat = self.vectors()
        return duplicate_groups(paths, mat, threshold)

    @_locked
    def export(self, path: str | os.PathLike) -> Path:
        """Write every indexed file's metadata (path, size, mtime_ns, sha256, width, height) and vector to
        ``path``, atomically, in the format its suffix names (the rule of ``mmembed embed -o`` and ``mmembed
        export``, :func:`multimodal_embed.index.shards.output_format`): ``.parquet`` (pyarrow; the model identity in the
        schema metadata), ``.jsonl`` (one object per file, with its ``vector``) or ``.npy`` (the matrix, and the
        metadata rows in ``NAME.npy.meta.jsonl``). Any other suffix (``.csv`` too) raises
        :class:`InvalidInputError` before anything is written. Returns the path.

        In Parquet, ``path`` is UTF-8 text (a name that is not UTF-8 shows its other bytes as ``\\xNN``) and
        ``path_bytes`` holds every path's exact bytes (``os.fsdecode`` of them opens the file)."""
        from .shards import arrow_vectors, output_format, write_parquet, write_vectors

        fmt = output_format(path)
        try:
            import pyarrow as pa
        except ImportError as exc:
            if fmt == ".parquet":
                raise MissingDependencyError("export to .parquet needs pyarrow: pip install pyarrow") from exc
        ids, paths, mat = self.vectors()
        meta = {r[0]: r for r in self.conn.execute(
            "SELECT id, size, mtime_ns, sha256, width, height FROM files WHERE status = 'ok'")}
        if fmt != ".parquet":
            keys = ("size", "mtime_ns", "sha256", "width", "height")
            rows = [{"path": p, **dict(zip(keys, meta[i][1:]))} for i, p in zip(ids, paths)]
            return write_vectors(rows, mat.reshape(len(ids), self.dim), path)
        cols = list(zip(*(meta[i] for i in ids))) if ids else [[]] * 6
        raw = [os.fsencode(p) for p in paths]
        table = pa.table({"path": pa.array([utf8_text(p) for p in paths], pa.string()),
                          "path_bytes": pa.array(raw, pa.binary()), "size": pa.array(cols[1], pa.int64()),
                          "mtime_ns": pa.array(cols[2], pa.int64()), "sha256": pa.array(cols[3], pa.string()),
                          "width": pa.array(cols[4], pa.int32()), "height": pa.array(cols[5], pa.int32()),
                          "vector": arrow_vectors(mat, self.dim)})
        return write_parquet(table, path, identity=self.identity)


__all__ = ["IMAGE_EXTENSIONS", "SEARCH_CHUNK_ROWS", "ImageIndex", "IndexReport", "SearchHit", "exact_search",
           "parse_query", "query_kind"]
