"""A persistent, incremental image index: text-to-image and image-to-image search.

>>> index = ImageIndex.create("photos.mmindex", embedder)            # store="binary+int8" for large collections
>>> report = index.add_folder("~/Pictures")      # new, changed, moved and deleted files only
>>> hits = index.search("a dog on a beach", k=10)

One SQLite file (WAL) holds the model identity, one row per file (path, size, mtime, SHA-256, size in pixels,
status, error) and one row per vector (its row in the vector files + CRC32); the vectors themselves live in flat
files beside it, one per stored tier (float32, int8, binary), read by memory mapping (see :mod:`.storage`). Every
batch is one transaction, so killing the process at any instant leaves a consistent index; a re-run finishes the
job. Readers in other processes see committed rows while indexing runs.
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import wraps
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import IndexAccessError, IndexCorruptError, IndexMismatchError, InvalidInputError, MissingDependencyError
from ..imagefiles import IMAGE_EXTENSIONS, inside, is_image_name, printable, utf8_name, utf8_text
from ..utils import AUTO_PROGRESS_MIN_STEPS, progress
from . import quantize as Q
from .scanning import KnownFile, PendingFile, file_dims, scan_changes, sha256_file
from .search import (
    SEARCH_CHUNK_ROWS,
    AnnCache,
    binary_flat,
    check_cosine,
    combine,
    duplicate_groups,
    exact_search,
    mix_terms,
    parse_query,
    search_tiers,
    use_ann,
)
from .storage import Layout, map_rows, remove_older, row_crcs, vector_files, write_rows

logger = logging.getLogger(__name__)

# 2: ``files.failed_with`` (the software that recorded a failure).
# 3: vectors in memory-mapped files beside the SQLite file (``vectors``: file_id -> slot, crc32), their tiers in
#    ``meta.vector_store``, the committed slot count in ``meta.vector_rows``. Older files are migrated when opened.
SCHEMA_VERSION = 3
RESCORE_DEFAULT = 4  # binary stores: Hamming top-(k x 4), then rescoring with the int8 or float32 tier
COMPACT_MIN_DEAD = 1024  # rewrite the vector files when more rows than this, and than live rows, are dead
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
    slot INTEGER NOT NULL UNIQUE,
    crc32 INTEGER NOT NULL
);
"""
_VECTORS_V3 = """CREATE TABLE vectors_v3 (
    file_id INTEGER PRIMARY KEY REFERENCES files (id) ON DELETE CASCADE,
    slot INTEGER NOT NULL UNIQUE,
    crc32 INTEGER NOT NULL
)"""


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
    id: int | None = None  # the file's row in the index


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
    written (read-only) stays as it is and is read as it is. Each step takes one version to the next."""
    before = int(conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0])
    try:
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            found = start = int(conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0])
            if found == 1:
                conn.execute("ALTER TABLE files ADD COLUMN failed_with TEXT")  # NULL: failures retried once
                found = 2
            if found == 2:
                _vectors_to_files(path, conn)
                found = 3
            if found != start:
                conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(found),))
                logger.info("%s: index file migrated from schema %d to %d", path, start, found)
            return found
    except sqlite3.OperationalError as exc:
        if "readonly" not in str(exc).lower():
            raise
        logger.info("%s: read-only index file of schema %d, read without migrating it", path, before)
        return before


def _vectors_to_files(path: Path, conn: sqlite3.Connection) -> None:
    """Schema 2 -> 3, inside the caller's transaction: the float32 blobs (checked) move to a vector file, the
    ``vectors`` table keeps each file's slot and CRC32 (the same bytes, so the same CRC)."""
    dim = _recorded_dim(json.loads(conn.execute("SELECT value FROM meta WHERE key = 'model'").fetchone()[0]))
    layout = Layout(("float32",), dim, 1)
    target = layout.file(path, "float32")
    cursor = conn.execute("SELECT v.file_id, v.vector, v.crc32, f.path FROM vectors v JOIN files f "
                          "ON f.id = v.file_id ORDER BY v.file_id")
    slots: list[tuple[int, int, int]] = []
    write_rows(target, 0, np.zeros((0, dim), np.float32), truncate=True)
    while batch := cursor.fetchmany(4096):
        block = np.empty((len(batch), dim), np.float32)
        for r, (file_id, blob, crc, name) in enumerate(batch):
            if len(blob) != 4 * dim or zlib.crc32(blob) != crc:
                raise IndexCorruptError(f"{path}: the vector of {printable(_os_path(name))} fails its integrity "
                                        "check")
            block[r] = np.frombuffer(blob, np.float32)
            slots.append((file_id, len(slots), crc))
        write_rows(target, len(slots) - len(batch), block)
    conn.execute(_VECTORS_V3)
    conn.executemany("INSERT INTO vectors_v3 VALUES (?, ?, ?)", slots)
    conn.execute("DROP TABLE vectors")
    conn.execute("ALTER TABLE vectors_v3 RENAME TO vectors")
    conn.execute("INSERT OR REPLACE INTO meta VALUES ('vector_store', ?), ('vector_rows', ?)",
                 (layout.to_meta(), str(len(slots))))


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


def _parse_layout(path: Path, meta: dict[str, str], model_dim: int) -> tuple[Layout, int]:
    """The vector layout and committed slot count of a schema-3 meta table, or :class:`IndexCorruptError`."""
    try:
        layout, rows = Layout.from_meta(meta["vector_store"], model_dim), int(meta["vector_rows"])
        if rows < 0:
            raise ValueError(f"negative row count {rows}")
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise IndexCorruptError(f"{path}: the vector layout in its meta table is damaged ({exc!r})") from None
    return layout, rows


def _recorded_dim(identity: Any) -> int:
    """The model dimension of a recorded identity: an int from 1 to ``MAX_DIM``, else ``ValueError``."""
    dim = identity.get("dim") if isinstance(identity, dict) else None
    if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= MAX_DIM:
        raise ValueError(f"the model dimension {dim!r} is not an int from 1 to {MAX_DIM}")
    return dim


@dataclass
class _View:
    """One consistent view of the stored vectors, cached until the index changes: the layout, how many slots are
    committed and live, and (loaded when needed) the live slots with their file ids and the mapped tier files."""

    version: int | None
    layout: Layout
    rows: int
    live: int | None = None  # see ImageIndex._live
    slots: np.ndarray | None = None  # live slots, ascending
    file_ids: np.ndarray | None = None  # the file of each live slot
    maps: dict[str, np.ndarray] = field(default_factory=dict)


class _Writer:
    """Rows appended inside one write transaction: written to the vector files (one write and one fsync per tier)
    and recorded in ``vectors`` just before the commit (:meth:`ImageIndex._write`)."""

    def __init__(self, index_path: Path, layout: Layout, rows: int):
        self.path, self.layout, self.start = index_path, layout, rows
        self.file_ids: list[int] = []
        self.codes: dict[str, list[np.ndarray]] = {t: [] for t in layout.tiers}

    def add(self, file_ids: list[int], codes: dict[str, np.ndarray]) -> None:
        self.file_ids += file_ids
        for t in self.layout.tiers:
            self.codes[t].append(codes[t])

    def finish(self, conn: sqlite3.Connection) -> None:
        if not self.file_ids:
            return
        codes = {t: np.concatenate(c) for t, c in self.codes.items()}
        for t, path in vector_files(self.path, self.layout).items():
            write_rows(path, self.start, codes[t])
        n = len(self.file_ids)
        conn.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?)",
                         zip(self.file_ids, range(self.start, self.start + n), row_crcs(codes, self.layout.tiers)))
        conn.execute("UPDATE meta SET value = ? WHERE key = 'vector_rows'", (str(self.start + n),))


class _StaleView(Exception):
    """The vector files were rewritten by another process since the view was read: read it again."""


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
        self._cache: tuple[Any, list[int], list[str], np.ndarray] | None = None
        self._view_cache: _View | None = None
        self._writer: _Writer | None = None
        self._flat: tuple[Any, Any] | None = None
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
    def create(cls, path: str | os.PathLike, embedder: Any, *, store: str | None = None, dim: int | None = None,
               exist_ok: bool = False) -> ImageIndex:
        """A new index for ``embedder`` (which needs an image tower). ``exist_ok`` opens an existing one (and
        changes its store when ``store`` or ``dim`` differ, see :meth:`change_store`).

        ``store`` says what is kept per vector: ``"float32"`` (the default: exact search), ``"int8"`` (4x
        smaller), ``"binary"`` (32x smaller, Hamming ranking only), ``"binary+int8"`` or ``"binary+float32"``
        (Hamming top-(k x ``rescore``) then rescoring with the second tier); ``dim`` stores a Matryoshka prefix
        (models trained for it, e.g. nomic v1.5). See :mod:`multimodal_embed.index.quantize`."""
        path = Path(path).expanduser()
        if path.exists():
            if exist_ok:
                index = cls.open(path, embedder)
                if store is not None or dim is not None:
                    index.change_store(store or Q.store_name(index.layout.tiers), dim=dim or index.layout.dim)
                return index
            raise InvalidInputError(f"{path} already exists (use ImageIndex.open, or exist_ok=True)")
        if embedder.vision_encoder is None:
            raise InvalidInputError("an image index needs an Embedder with an image tower")
        tiers = Q.parse_store(store or "float32")
        layout = Layout(tiers, embedder.check_dimensionality(dim), 1,
                        Q.Int8Ranges.fixed(embedder.check_dimensionality(dim)) if "int8" in tiers else None)
        path.parent.mkdir(parents=True, exist_ok=True)
        identity = embedder.identity()
        try:
            conn = cls._connect(path)
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute("INSERT INTO meta VALUES ('schema_version', ?), ('model', ?), ('roots', '[]'), "
                             "('vector_store', ?), ('vector_rows', '0')",
                             (str(SCHEMA_VERSION), json.dumps(identity, sort_keys=True), layout.to_meta()))
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
        if int(meta["schema_version"]) >= 3:
            _parse_layout(path, meta, identity["dim"])
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
        if schema >= 3:
            remove_older(path, index.layout.generation)  # left by a rewrite killed after its commit
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
        self._flat = self._view_cache = self._cache = None  # the mapped files and FAISS's copy go now
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
        self._maintain()
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
        with self._write():
            for path, st, reason in unreadable:
                self._record(path, root, st, "", (None, None), None, reason, report)
        self._cache = self._view_cache = None

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
            with self._write():
                if _os_path(src[1]) in gone:  # moved: re-path the row, keep its vector
                    self.conn.execute("DELETE FROM files WHERE path = ?", (_db_path(path),))
                    self.conn.execute("UPDATE files SET path = ?, root = ?, size = ?, mtime_ns = ?, indexed_at = ? "
                                      "WHERE id = ?", (_db_path(path), _db_path(root), st.st_size, st.st_mtime_ns,
                                                       time.time(), src[0]))
                    gone.discard(_os_path(src[1]))
                    report.moved += 1
                else:  # a copy of an indexed file: reuse its vector
                    file_id = self._upsert(path, root, st, sha, dims, "ok", None)
                    self._copy_vector(src[0], file_id)
                    report.copied += 1
            self._cache = self._view_cache = None
        return to_embed

    def _remove(self, gone: set[str], report: IndexReport) -> None:
        if not gone:
            return
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.executemany("DELETE FROM files WHERE path = ?", [(_db_path(p),) for p in sorted(gone)])
        report.removed = len(gone)
        self._cache = self._view_cache = None

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
            with self._write():
                for j, (path, st, sha, dims) in enumerate(batch):
                    self._record(path, root, st, sha, dims, vectors.get(j), reasons.get(j, "unknown error"), report)
            self._cache = self._view_cache = None
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
            with self._write():
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
            self._cache = self._view_cache = None
        self._maintain()
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
            self._append([file_id], np.asarray(vector, dtype=np.float32)[None, :])
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

    # -- vector storage ------------------------------------------------------------------------------------
    @property
    @_locked
    def layout(self) -> Layout:
        """How the vectors are stored: tiers, stored size (``layout.dim``), file generation, int8 ranges."""
        return self._view().layout

    @contextmanager
    def _write(self) -> Iterator[None]:
        """One write transaction; vectors appended in it (:meth:`_append`) reach the vector files before the
        commit and are committed with the rows that point at them."""
        if self.schema_version < 3:
            raise IndexAccessError(f"cannot write to the index {self.path}: it is an older, read-only file (schema "
                                   f"{self.schema_version}); make it writable to upgrade it")
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            meta = dict(self.conn.execute("SELECT key, value FROM meta WHERE key IN ('vector_store', 'vector_rows')"))
            layout, rows = _parse_layout(self.path, meta, self.dim)
            self._writer = _Writer(self.path, layout, rows)
            try:
                yield
                self._writer.finish(self.conn)
                if self._writer.layout is not layout:  # calibrated on this first batch
                    self.conn.execute("UPDATE meta SET value = ? WHERE key = 'vector_store'",
                                      (self._writer.layout.to_meta(),))
            finally:
                self._writer = None
                self._cache = self._view_cache = None

    def _append(self, file_ids: list[int], vectors: np.ndarray) -> None:
        """Queue ``vectors`` (model size, unit rows) for ``file_ids`` in the current write (see :meth:`_write`).
        An empty int8 index calibrates its ranges on a first batch of at least ``CALIBRATION_MIN`` vectors."""
        from ..encoders import truncate_unit

        w = self._writer
        assert w is not None, "_append outside _write"
        vec = truncate_unit(np.asarray(vectors, dtype=np.float32), w.layout.dim)
        lay = w.layout
        if (lay.ranges is not None and lay.ranges.calibrated_on == 0 and w.start == 0 and not w.file_ids
                and len(vec) >= Q.CALIBRATION_MIN):
            w.layout = Layout(lay.tiers, lay.dim, lay.generation, Q.Int8Ranges.calibrate([vec]))
        w.add(list(file_ids), Q.encode(w.layout.tiers, vec, w.layout.ranges))

    def _copy_vector(self, src_id: int, dst_id: int) -> None:
        """Queue a copy of ``src_id``'s stored codes (not re-encoded: the same bytes) for ``dst_id``."""
        w = self._writer
        assert w is not None, "_copy_vector outside _write"
        slot = self.conn.execute("SELECT slot FROM vectors WHERE file_id = ?", (src_id,)).fetchone()[0]
        w.add([dst_id], {t: np.array(map_rows(w.layout.file(self.path, t), t, w.layout.dim, w.start)[slot:slot + 1])
                         for t in w.layout.tiers})

    def _view(self) -> _View:
        version = self._data_version()
        view = self._view_cache
        if view is not None and view.version == version:
            return view
        if self.schema_version < 3:  # an older file opened read-only: its blobs, read into memory
            ids, _, mat = self._legacy_vectors()
            view = _View(version, Layout(("float32",), self.dim), len(ids), len(ids), np.arange(len(ids)),
                         np.asarray(ids, np.int64), {"float32": mat})
        else:
            meta = dict(self.conn.execute("SELECT key, value FROM meta WHERE key IN ('vector_store', 'vector_rows')"))
            layout, rows = _parse_layout(self.path, meta, self.dim)
            view = _View(version, layout, rows)  # the live count is read when needed (it reads a table)
        self._view_cache = view
        return view

    def _binary_flat(self, view: _View) -> Any:
        """FAISS's copy of the binary codes (:func:`.search.binary_flat`), kept until the vectors change."""
        key = (view.version, view.layout.generation, view.rows)
        if self._flat is None or self._flat[0] != key:
            self._flat = None  # the old copy goes before the new one is built
            self._flat = (key, binary_flat(self._codes(view, "binary")))
        return self._flat[1]

    def _live(self, view: _View) -> int:
        """How many of the view's slots are live (a file points at them)."""
        if view.live is None:
            view.live = self.conn.execute("SELECT count(*) FROM vectors WHERE slot < ?", (view.rows,)).fetchone()[0]
        return view.live

    def _codes(self, view: _View, tier: str) -> np.ndarray:
        """A tier's committed rows, memory-mapped (cached in the view)."""
        if tier not in view.maps:
            path = view.layout.file(self.path, tier)
            try:
                view.maps[tier] = map_rows(path, tier, view.layout.dim, view.rows)
            except FileNotFoundError:
                meta = dict(self.conn.execute("SELECT key, value FROM meta WHERE key IN ('vector_store', "
                                              "'vector_rows')"))
                if _parse_layout(self.path, meta, self.dim)[0].generation != view.layout.generation:
                    raise _StaleView from None  # rewritten by another process since this view was read
                raise IndexCorruptError(f"{self.path}: its vector file {path.name} is missing") from None
            except ValueError as exc:
                raise IndexCorruptError(f"{self.path}: its vector file is damaged ({exc})") from None
        return view.maps[tier]

    def _live_slots(self, view: _View, with_paths: bool = False) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
        """(live slots ascending, their file ids, their paths when asked) of a view."""
        if with_paths or view.slots is None:
            if self.schema_version < 3:
                rows = [(s, i, None) for s, i in zip(view.slots, view.file_ids)]
                if with_paths:
                    _, paths, _ = self._legacy_vectors()
                    rows = [(s, i, p) for (s, i, _), p in zip(rows, paths)]
            else:
                rows = self.conn.execute(
                    "SELECT v.slot, v.file_id" + (", f.path FROM vectors v JOIN files f ON f.id = v.file_id"
                                                  if with_paths else " FROM vectors v")
                    + " WHERE v.slot < ? ORDER BY v.slot", (view.rows,)).fetchall()
            view.slots = np.fromiter((r[0] for r in rows), np.int64, count=len(rows))
            view.file_ids = np.fromiter((r[1] for r in rows), np.int64, count=len(rows))
            if with_paths:
                return view.slots, view.file_ids, [_os_path(r[2]) for r in rows]
        assert view.slots is not None and view.file_ids is not None
        return view.slots, view.file_ids, None

    def _read_slots(self, view: _View, tier: str, slots: np.ndarray) -> np.ndarray:
        """Float32 rows read back from ``tier`` at ``slots`` (sorted, for locality)."""
        return Q.decode(tier, self._codes(view, tier)[slots], view.layout.dim, view.layout.ranges)

    def _check_slot(self, view: _View, slot: int, crc: int, path: str) -> None:
        if self.schema_version < 3:
            return
        codes = {t: np.asarray(self._codes(view, t)[slot:slot + 1]) for t in view.layout.tiers}
        if row_crcs(codes, view.layout.tiers)[0] != crc:
            raise IndexCorruptError(f"{self.path}: the vector of {printable(path)} fails its integrity check")

    @_locked
    def change_store(self, store: str, *, dim: int | None = None) -> None:
        """Re-encode the stored vectors to ``store`` (see :meth:`create`) and, for Matryoshka models, the stored
        size ``dim``, from the precision the index holds. A change that would need more than is stored (int8 or
        binary to float32, binary to int8, a larger ``dim``) raises :class:`InvalidInputError`: build a new index
        from the images instead. Crash-safe: the new files are committed in one transaction."""
        tiers = Q.parse_store(store)
        old = self._view().layout
        new_dim = old.dim if dim is None else self.embedder.check_dimensionality(dim)
        have, want = Q.richest(old.tiers), Q.richest(tiers)
        if Q.TIERS.index(want) < Q.TIERS.index(have) or new_dim > old.dim:
            raise InvalidInputError(
                f"{self.path} stores {Q.store_name(old.tiers)} vectors of size {old.dim}: it cannot become "
                f"{Q.store_name(tiers)} of size {new_dim}, which needs more precision than it kept (no "
                f"re-encoding gets it back). Index the images again into a new index with --store "
                f"{Q.store_name(tiers)}")
        if tiers != old.tiers or new_dim != old.dim:
            self._rewrite(tiers, new_dim, recalibrate=new_dim != old.dim or "int8" not in old.tiers)

    def _rewrite(self, tiers: tuple[str, ...], dim: int, *, recalibrate: bool) -> None:
        """Write every live vector into a new generation of vector files (re-encoded from the richest stored
        tier, renumbered without gaps), then switch to it in one transaction; the old files go after the commit."""
        from ..encoders import truncate_unit

        if self.schema_version < 3:
            raise IndexAccessError(f"cannot write to the index {self.path}: it is an older, read-only file")
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            meta = dict(self.conn.execute("SELECT key, value FROM meta WHERE key IN ('vector_store', 'vector_rows')"))
            old, rows = _parse_layout(self.path, meta, self.dim)
            live = self.conn.execute("SELECT slot, file_id FROM vectors WHERE slot < ? ORDER BY slot",
                                     (rows,)).fetchall()
            slots = np.fromiter((r[0] for r in live), np.int64, count=len(live))
            src = Q.richest(old.tiers)
            try:
                codes = map_rows(old.file(self.path, src), src, old.dim, rows)
            except (OSError, ValueError) as exc:
                raise IndexCorruptError(f"{self.path}: its vector file cannot be read ({exc})") from None
            chunk = 65536

            def blocks() -> Iterator[np.ndarray]:
                for a in range(0, len(slots), chunk):
                    yield truncate_unit(Q.decode(src, codes[slots[a:a + chunk]], old.dim, old.ranges), dim)

            ranges = None
            if "int8" in tiers:
                if not recalibrate and old.ranges is not None and old.dim == dim:
                    ranges = old.ranges
                elif len(slots) >= Q.CALIBRATION_MIN:
                    ranges = Q.Int8Ranges.calibrate(blocks())
                else:
                    ranges = Q.Int8Ranges.fixed(dim)
            new = Layout(tiers, dim, old.generation + 1, ranges)
            files = vector_files(self.path, new)
            crcs: list[int] = []
            for t, f in files.items():
                write_rows(f, 0, np.zeros((0, 1), np.uint8), truncate=True)
            for start, block in zip(range(0, len(slots), chunk), blocks()):
                enc = Q.encode(tiers, block, ranges)
                for t, f in files.items():
                    write_rows(f, start, enc[t])
                crcs += row_crcs(enc, tiers)
            self.conn.execute("DELETE FROM vectors")
            self.conn.executemany("INSERT INTO vectors VALUES (?, ?, ?)",
                                  ((r[1], i, c) for i, (r, c) in enumerate(zip(live, crcs))))
            self.conn.execute("UPDATE meta SET value = ? WHERE key = 'vector_store'", (new.to_meta(),))
            self.conn.execute("UPDATE meta SET value = ? WHERE key = 'vector_rows'", (str(len(slots)),))
        self._cache = self._view_cache = None
        remove_older(self.path, new.generation)
        logger.info("%s: vectors rewritten as %s (size %d, %d vectors)", self.path, Q.store_name(tiers), dim,
                    len(slots))

    def _maintain(self) -> None:
        """After a write: recalibrate int8 ranges when the index has grown enough (see
        :mod:`.quantize`), or compact the vector files when more rows are dead than live."""
        if self.schema_version < 3:
            return
        self._view_cache = None
        view = self._view()
        lay = view.layout
        if lay.ranges is not None:
            cal = lay.ranges.calibrated_on
            live = self._live(view)
            if (cal == 0 and live >= Q.CALIBRATION_MIN) or (cal and live >= Q.RECALIBRATE_GROWTH * cal):
                self._rewrite(lay.tiers, lay.dim, recalibrate=True)
                return
        if view.rows - self._live(view) > max(COMPACT_MIN_DEAD, self._live(view)):
            self._rewrite(lay.tiers, lay.dim, recalibrate=False)

    @_locked
    def _add_rows(self, paths: list[str], vectors: np.ndarray, *, root: str = "/", chunk: int = 100_000) -> None:
        """Bulk-load vectors computed elsewhere for ``paths`` (not read or checked: benchmarks and tests of
        large indexes build them this way)."""
        self._add_root(root)
        now = time.time()
        for a in range(0, len(paths), chunk):
            with self._write():
                base = self.conn.execute("SELECT coalesce(max(id), 0) FROM files").fetchone()[0]
                ids = list(range(base + 1, base + 1 + len(paths[a:a + chunk])))
                self.conn.executemany(
                    "INSERT INTO files (id, path, root, size, mtime_ns, sha256, status, indexed_at) "
                    "VALUES (?, ?, ?, 0, 0, '', 'ok', ?)",
                    ((i, _db_path(p), _db_path(root), now) for i, p in zip(ids, paths[a:a + chunk])))
                self._append(ids, vectors[a:a + chunk])
        self._maintain()

    # -- reading -------------------------------------------------------------------------------------------
    def _data_version(self) -> int:
        return self.conn.execute("PRAGMA data_version").fetchone()[0]

    def _legacy_vectors(self) -> tuple[list[int], list[str], np.ndarray]:
        """The float32 blobs of an older (schema 1 or 2) file that could not be migrated (read-only)."""
        rows = self.conn.execute("SELECT f.id, f.path, v.vector, v.crc32 FROM files f JOIN vectors v "
                                 "ON v.file_id = f.id WHERE f.status = 'ok' ORDER BY f.id").fetchall()
        mat = np.empty((len(rows), self.dim), dtype=np.float32)
        for r, (_, path, blob, crc) in enumerate(rows):
            if len(blob) != 4 * self.dim or zlib.crc32(blob) != crc:
                raise IndexCorruptError(f"{self.path}: the vector of {printable(_os_path(path))} fails its "
                                        "integrity check")
            mat[r] = np.frombuffer(blob, dtype=np.float32)
        return [r[0] for r in rows], [_os_path(r[1]) for r in rows], mat

    @_locked
    def vectors(self) -> tuple[list[int], list[str], np.ndarray]:
        """(file ids, paths, ``(n, d)`` float32 matrix) of every indexed file, in stored order; cached until the
        index changes. ``d`` is the stored size; compact tiers are read back (:func:`.quantize.decode`) from
        the richest tier stored. Reads (and checks) every vector: a search does not need this."""
        for attempt in (0, 1):
            try:
                return self._all_vectors()
            except _StaleView:
                self._view_cache = None
                if attempt:
                    raise IndexAccessError(f"{self.path} is being rewritten by another process; try again") from None
        raise AssertionError("unreachable")

    def _all_vectors(self) -> tuple[list[int], list[str], np.ndarray]:
        view = self._view()
        if self._cache is not None and self._cache[0] == (view.version, view.layout.generation, view.rows):
            return self._cache[1], self._cache[2], self._cache[3]
        if self.schema_version < 3:
            ids, paths, mat = self._legacy_vectors()
        else:
            rows = self.conn.execute(
                "SELECT v.slot, f.id, f.path, v.crc32 FROM vectors v JOIN files f ON f.id = v.file_id "
                "WHERE f.status = 'ok' AND v.slot < ? ORDER BY v.slot", (view.rows,)).fetchall()
            slots = np.fromiter((r[0] for r in rows), np.int64, count=len(rows))
            lay, tier = view.layout, Q.richest(view.layout.tiers)
            mat = np.empty((len(rows), lay.dim), np.float32)
            for a in range(0, len(rows), 65536):
                part = slots[a:a + 65536]
                codes = {t: np.asarray(self._codes(view, t)[part]) for t in lay.tiers}
                for (_, _, path, crc), got in zip(rows[a:a + 65536], row_crcs(codes, lay.tiers)):
                    if got != crc:
                        raise IndexCorruptError(f"{self.path}: the vector of {printable(_os_path(path))} fails its "
                                                "integrity check")
                mat[a:a + len(part)] = Q.decode(tier, codes[tier], lay.dim, lay.ranges)
            ids, paths = [r[1] for r in rows], [_os_path(r[2]) for r in rows]
        self._cache = ((view.version, view.layout.generation, view.rows), ids, paths, mat)
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
               nprobe: int = 32, rescore: int | None = None, texts_only: bool = False,
               include_query: bool = False) -> list[SearchHit]:
        """The ``k`` best files for ``query`` (see :meth:`query_vector`), best first, with their metadata.

        ``min_score`` drops weaker hits; ``path_filter`` is a glob (``"*/animals/*"``) or a predicate on the path,
        applied before the top-k (the best ``k`` within the matching files).
        An indexed file that is itself a query term (its path, or its exact bytes) is left out of the hits (it
        would come first at 1.0); ``include_query=True`` keeps it.

        How it searches follows the index's store (:meth:`create`): float32, exact top-k (``ann=True``: a FAISS
        IVF index, the ``ann`` extra, approximate; ``ann=None`` uses it above 200,000 vectors when FAISS is
        installed); int8, exact top-k over the int8 codes read back; binary stores, Hamming top-(k x ``rescore``)
        then the candidates rescored with the int8 or float32 tier (``rescore`` defaults to 4; ``0``, or a
        ``binary``-only store, ranks by Hamming distance, scored ``1 - 2 * distance / dim``).
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InvalidInputError(f"k must be a positive int, got {k!r}")
        if rescore is not None and (isinstance(rescore, bool) or not isinstance(rescore, int) or rescore < 0):
            raise InvalidInputError(f"rescore must be an int >= 0 (candidates per hit), got {rescore!r}")
        if min_score is not None:
            min_score = check_cosine(min_score, "min_score")
        q = self.query_vector(query, texts_only=texts_only)
        own = set() if include_query else self._query_files(query, texts_only)
        for attempt in (0, 1):
            try:
                view, scores, slots = self._top(q, k, own, path_filter, ann, nprobe, rescore)
                break
            except _StaleView:
                self._view_cache = None
                if attempt:
                    raise IndexAccessError(f"{self.path} is being rewritten by another process; try again") from None
        hits = []
        for s, slot in zip(scores, slots):
            if not np.isfinite(s) or (min_score is not None and s < min_score):
                continue
            if self.schema_version < 3:
                meta = self.conn.execute("SELECT path, width, height, size, mtime_ns, sha256, NULL, id FROM files "
                                         "WHERE id = ?", (int(view.file_ids[slot]),)).fetchone()
            else:
                meta = self.conn.execute("SELECT f.path, f.width, f.height, f.size, f.mtime_ns, f.sha256, v.crc32, "
                                         "f.id FROM vectors v JOIN files f ON f.id = v.file_id WHERE v.slot = ?",
                                         (int(slot),)).fetchone()
            if meta is None:  # removed since the view was read
                continue
            self._check_slot(view, int(slot), meta[6], _os_path(meta[0]))
            hits.append(SearchHit(_os_path(meta[0]), float(s), meta[1], meta[2], meta[3], meta[4], meta[5], meta[7]))
        return hits[:k]

    def _top(self, q: np.ndarray, k: int, own: set[str], path_filter: str | Callable[[str], bool] | None,
             ann: bool | None, nprobe: int, rescore_by: int | None) -> tuple[_View, np.ndarray, np.ndarray]:
        """(view, scores, slots) of the best ``k``: filters and dead rows masked before the top-k."""
        from ..encoders import truncate_unit

        view = self._view()
        lay = view.layout
        qd = truncate_unit(q[None, :], lay.dim)[0]
        mask = None
        if self._live(view) != view.rows or path_filter is not None or own:
            slots, _, paths = self._live_slots(view, with_paths=path_filter is not None or bool(own))
            keep = np.ones(len(slots), dtype=bool)
            if paths is not None:
                pred = (path_filter if callable(path_filter) else
                        (lambda p: fnmatch.fnmatch(p, path_filter)) if path_filter is not None else (lambda p: True))
                keep = np.fromiter((p not in own and bool(pred(p)) for p in paths), dtype=bool, count=len(paths))
            mask = np.zeros(view.rows, dtype=bool)
            mask[slots[keep]] = True
        if lay.tiers == ("float32",) and use_ann(ann, self._live(view)) and mask is None and view.rows:
            ivf = self._ann.get(self._codes(view, "float32"), (view.version, lay.generation, view.rows), nprobe)
            s, r = ivf.search(qd[None, :], min(k, view.rows))
            return view, s[0], r[0]
        scores, rows = search_tiers(lambda t: self._codes(view, t), lay.tiers, lay.dim, lay.ranges, qd, k,
                                    mask=mask, rescore_by=RESCORE_DEFAULT if rescore_by is None else rescore_by,
                                    binary_index=lambda: self._binary_flat(view))
        return view, scores, rows

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
        images and failures, when it last changed, how its vectors are stored (``store``: the tiers, stored size,
        bytes per vector of each tier, int8 calibration) and its size on disk (the file, its WAL and the vector
        files)."""
        images, failed, last = self.conn.execute(
            "SELECT sum(status = 'ok'), sum(status = 'error'), max(indexed_at) FROM files").fetchone()
        view = self._view()
        lay = view.layout
        files = [self.path, Path(f"{self.path}-wal")]
        if self.schema_version >= 3:
            files += list(vector_files(self.path, lay).values())
        size = sum(os.path.getsize(p) for p in files if os.path.exists(p))
        store = {"name": Q.store_name(lay.tiers), **Q.describe(lay.tiers, lay.dim), "rows": view.rows,
                 "live": self._live(view),
                 "int8_calibrated_on": None if lay.ranges is None else lay.ranges.calibrated_on}
        return {"path": str(self.path), "schema_version": self.schema_version, "model": self.identity,
                "dim": self.dim, "folders": self.roots, "images": int(images or 0), "failed": int(failed or 0),
                "last_indexed": last, "bytes": size, "store": store}

    @_locked
    def duplicates(self, threshold: float = 0.95) -> list[list[str]]:
        """Groups (size >= 2) of files whose vectors have cosine >= ``threshold`` (transitively)."""
        threshold = check_cosine(threshold, "threshold")
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
        ``path_bytes`` holds every path's exact bytes (``os.fsdecode`` of them opens the file).

        ``vector`` is what the index stores, read back as float32 (for compact stores: the richest tier decoded,
        see :mod:`.quantize`). Parquet also holds the stored codes (``int8``: a list of int8, ``binary``: the
        packed bytes) and the quantization parameters (schema metadata ``multimodal_embed.quantization``: tiers,
        stored size, int8 ``lo``/``hi`` per dimension), so the codes can be read back without this package."""
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
            return write_vectors(rows, mat.reshape(len(ids), -1), path)
        cols = list(zip(*(meta[i] for i in ids))) if ids else [[]] * 6
        raw = [os.fsencode(p) for p in paths]
        lay = self.layout
        columns = {"path": pa.array([utf8_text(p) for p in paths], pa.string()),
                   "path_bytes": pa.array(raw, pa.binary()), "size": pa.array(cols[1], pa.int64()),
                   "mtime_ns": pa.array(cols[2], pa.int64()), "sha256": pa.array(cols[3], pa.string()),
                   "width": pa.array(cols[4], pa.int32()), "height": pa.array(cols[5], pa.int32()),
                   "vector": arrow_vectors(mat, lay.dim)}
        codes = self._stored_codes(ids)
        if "int8" in codes:
            columns["int8"] = pa.FixedSizeListArray.from_arrays(pa.array(codes["int8"].reshape(-1), pa.int8()),
                                                                lay.dim)
        if "binary" in codes:
            columns["binary"] = pa.array([r.tobytes() for r in codes["binary"]], pa.binary(codes["binary"].shape[1]))
        quant = {"tiers": list(lay.tiers), "dim": lay.dim,
                 "int8": None if lay.ranges is None else lay.ranges.to_json(),
                 "binary": "numpy.packbits(vector > 0, axis=1): big bit order" if "binary" in lay.tiers else None}
        return write_parquet(pa.table(columns), path, identity=self.identity,
                             metadata={"multimodal_embed.quantization": json.dumps(quant)})

    def _stored_codes(self, ids: list[int]) -> dict[str, np.ndarray]:
        """The stored int8 and binary codes of files ``ids`` (in that order)."""
        view = self._view()
        tiers = [t for t in view.layout.tiers if t != "float32"]
        if not tiers or self.schema_version < 3:
            return {}
        slot_of = dict(self.conn.execute("SELECT file_id, slot FROM vectors WHERE slot < ?", (view.rows,)))
        slots = np.asarray([slot_of[i] for i in ids], np.int64)
        return {t: np.asarray(self._codes(view, t)[slots]) for t in tiers}


__all__ = ["IMAGE_EXTENSIONS", "SEARCH_CHUNK_ROWS", "ImageIndex", "IndexReport", "SearchHit", "exact_search",
           "parse_query", "query_kind"]
