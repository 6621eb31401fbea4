"""What a map is made of: items (image paths or texts), their unit vectors and the model that made them.

Three sources: an image index (:class:`~multimodal_embed.ImageIndex`), a vectors file written by
``ImageIndex.export`` / ``mmembed export`` / ``mmembed embed -o`` (``.parquet``, ``.jsonl``, ``.npy`` with its
``.meta.jsonl``), or a text collection embedded here (a BEIR folder, a ``.jsonl`` of texts, a ``.txt`` with one text
per line).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError, MissingDependencyError

logger = logging.getLogger(__name__)

MAX_TEXT_CHARS = 20_000  # a longer text is cut before it is embedded (the models read a few hundred tokens)
TEXT_KEYS = ("text", "contents", "content", "body", "sentence")


@dataclass
class MapSource:
    """Items to map: ``kind`` is ``"image"`` (``items`` are file paths) or ``"text"`` (``items`` are the texts);
    ``vectors`` are their ``(n, d)`` float32 unit rows; ``identity`` is the model's (``Embedder.identity()``), when
    known; ``ids`` are document ids (texts) or the paths (images)."""

    kind: str
    items: list[str]
    vectors: np.ndarray
    identity: dict[str, Any] | None = None
    ids: list[str] = field(default_factory=list)
    name: str = ""

    def __post_init__(self) -> None:
        self.vectors = np.asarray(self.vectors, dtype=np.float32)
        if self.vectors.ndim != 2 or len(self.vectors) != len(self.items):
            raise InvalidInputError(f"{len(self.items)} items but vectors of shape {self.vectors.shape}")
        if self.kind not in ("image", "text"):
            raise InvalidInputError(f"kind must be 'image' or 'text', got {self.kind!r}")
        if not np.isfinite(self.vectors).all():
            bad = int(np.flatnonzero(~np.isfinite(self.vectors).all(axis=1))[0])
            raise InvalidInputError(f"the vector of {self.items[bad]!r} is not finite")
        norms = np.linalg.norm(self.vectors, axis=1, keepdims=True)
        self.vectors = self.vectors / np.maximum(norms, 1e-12)
        if not self.ids:
            self.ids = list(self.items)


def from_index(path: str | os.PathLike) -> MapSource:
    """Every indexed image of the index at ``path`` (the vectors stored in it; nothing is embedded)."""
    from .. import ImageIndex

    with ImageIndex.open(path) as index:
        _, paths, mat = index.vectors()
        identity = index.summary()["model"]
        return MapSource("image", list(paths), np.array(mat, dtype=np.float32), identity=identity,
                         name=Path(path).name)


def _row_item(row: dict[str, Any], where: str) -> tuple[str, str]:
    """(kind, item) of one metadata row of a vectors file: a ``path`` is an image, a text column a text."""
    if row.get("kind") == "text" or (row.get("path") in (None, "") and any(row.get(k) for k in TEXT_KEYS)):
        for k in TEXT_KEYS:
            if row.get(k) not in (None, ""):
                return "text", str(row[k])
    if row.get("path") not in (None, ""):
        return "image", str(row["path"])
    raise InvalidInputError(f"{where}: a row needs a 'path' (image) or a 'text' column")


def _kind_of(kinds: list[str], where: str) -> str:
    found = sorted(set(kinds))
    if len(found) > 1:
        raise InvalidInputError(f"{where} mixes texts and images; map one kind at a time")
    return found[0] if found else "image"


def from_vectors(path: str | os.PathLike) -> MapSource:
    """The rows and vectors of a file written by ``ImageIndex.export`` or ``mmembed embed -o`` (``.parquet``,
    ``.jsonl``, or ``.npy`` with ``NAME.npy.meta.jsonl`` beside it)."""
    p = Path(path)
    if not p.is_file():
        raise InvalidInputError(f"{p} is not a file")
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        return _from_parquet(p)
    if suffix == ".npy":
        mat = np.load(p, mmap_mode="r", allow_pickle=False)
        meta = Path(f"{p}.meta.jsonl")
        if not meta.is_file():
            raise InvalidInputError(f"{p}: no {meta.name} beside it (the paths or texts of the rows)")
        rows = _jsonl_rows(meta)
        if len(rows) != len(mat):
            raise InvalidInputError(f"{p} has {len(mat)} vectors but {meta.name} {len(rows)} rows")
        pairs = [_row_item(r, f"{meta} row {i + 1}") for i, r in enumerate(rows)]
        return MapSource(_kind_of([k for k, _ in pairs], str(p)), [x for _, x in pairs], np.asarray(mat),
                         ids=_ids(rows, pairs), name=p.name)
    if suffix == ".jsonl":
        rows = _jsonl_rows(p)
        vectors = []
        for i, r in enumerate(rows):
            v = r.pop("vector", None)
            if not isinstance(v, list) or not v:
                raise InvalidInputError(f"{p} row {i + 1}: no 'vector' list")
            vectors.append(v)
        if len({len(v) for v in vectors}) > 1:
            raise InvalidInputError(f"{p}: vectors of different lengths")
        pairs = [_row_item(r, f"{p} row {i + 1}") for i, r in enumerate(rows)]
        mat = np.array(vectors, dtype=np.float32).reshape(len(rows), -1 if rows else 0)
        return MapSource(_kind_of([k for k, _ in pairs], str(p)), [x for _, x in pairs], mat,
                         ids=_ids(rows, pairs), name=p.name)
    raise InvalidInputError(f"{p}: a vectors file is .parquet, .jsonl or .npy (with .npy.meta.jsonl)")


def _ids(rows: list[dict[str, Any]], pairs: list[tuple[str, str]]) -> list[str]:
    return [str(r.get("_id", r.get("id", item))) for r, (_, item) in zip(rows, pairs)]


def _from_parquet(p: Path) -> MapSource:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise MissingDependencyError("reading .parquet needs pyarrow: pip install pyarrow") from exc
    from ..index.shards import PARQUET_MODEL_KEY

    try:
        table = pq.read_table(p)
    except Exception as exc:  # noqa: BLE001 - ArrowInvalid, OSError: a damaged or foreign file
        raise InvalidInputError(f"{p}: not a readable Parquet file ({type(exc).__name__}: {exc})") from None
    if "vector" not in table.column_names:
        raise InvalidInputError(f"{p}: no 'vector' column (columns: {table.column_names})")
    meta = (table.schema.metadata or {}).get(PARQUET_MODEL_KEY.encode())
    identity = json.loads(meta) if meta else None
    col = table.column("vector").combine_chunks()
    if col.null_count:
        keep = np.flatnonzero(~np.asarray(col.is_null().to_numpy(zero_copy_only=False)))
        table = table.take(keep)
        col = table.column("vector").combine_chunks()
    n = len(table)
    flat = np.asarray(col.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
    mat = flat.reshape(n, -1) if n else np.zeros((0, 1), np.float32)
    if "path_bytes" in table.column_names:  # exact bytes of each path (a name that is not UTF-8 included)
        paths = [os.fsdecode(b) if b is not None else None for b in table.column("path_bytes").to_pylist()]
        rows = [{"path": x} for x in paths]
    else:
        keep_cols = [c for c in table.column_names if c in ("path", "kind", "_id", "id", *TEXT_KEYS)]
        rows = table.select(keep_cols).to_pylist()
    pairs = [_row_item(r, f"{p} row {i + 1}") for i, r in enumerate(rows)]
    return MapSource(_kind_of([k for k, _ in pairs], str(p)), [x for _, x in pairs], mat, identity=identity,
                     ids=_ids(rows, pairs), name=p.name)


def _jsonl_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of each non-blank line of a JSONL file."""
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidInputError(f"{path} line {n}: not JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise InvalidInputError(f"{path} line {n}: not a JSON object")
            yield n, row


def _jsonl_rows(path: Path) -> list[dict[str, Any]]:
    return [row for _, row in _jsonl_lines(path)]


def read_texts(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """(ids, texts) of a text collection: a BEIR folder (its ``corpus.jsonl``: ``title`` + ``text``), a ``.jsonl``
    (a ``text`` column, or ``contents``/``content``/``body``/``sentence``; ``_id``/``id``, else the line number) or
    a ``.txt`` (one text per line; the line number is the id). Blank texts are skipped (with a count in the log)."""
    p = Path(path)
    if p.is_dir():
        if not (p / "corpus.jsonl").is_file():
            raise InvalidInputError(f"{p}: a text collection folder needs a BEIR corpus.jsonl")
        p = p / "corpus.jsonl"
    if not p.is_file():
        raise InvalidInputError(f"{p} is not a file")
    ids: list[str] = []
    texts: list[str] = []
    blank = 0
    if p.suffix.lower() == ".jsonl":
        for line, row in _jsonl_lines(p):
            title = str(row.get("title") or "").strip()
            body = next((str(row[k]) for k in TEXT_KEYS if row.get(k) not in (None, "")), "")
            text = f"{title} {body}".strip()
            if not text:
                blank += 1
                continue
            ids.append(str(row.get("_id", row.get("id", line))))
            texts.append(text[:MAX_TEXT_CHARS])
    else:
        with open(p, encoding="utf-8") as fh:
            for i, line in enumerate(fh):
                if line.strip():
                    ids.append(str(i + 1))
                    texts.append(line.strip()[:MAX_TEXT_CHARS])
                else:
                    blank += 1
    if blank:
        logger.info("%s: %d blank texts skipped", p, blank)
    if not texts:
        raise InvalidInputError(f"{p} has no texts")
    return ids, texts


def from_texts(path: str | os.PathLike, embedder: Any, *, batch_size: int = 64,
               show_progress: bool | None = None) -> MapSource:
    """A text collection (see :func:`read_texts`) embedded with ``embedder`` as documents."""
    ids, texts = read_texts(path)
    vectors = embedder.embed_text(texts, task="search_document", batch_size=batch_size, show_progress=show_progress)
    return MapSource("text", texts, vectors, identity=embedder.identity(), ids=ids, name=Path(path).name)


def source_kind(path: str | os.PathLike) -> str:
    """``"index"`` (an SQLite file), ``"vectors"`` (.parquet, .npy, or a .jsonl whose first row has a ``vector``)
    or ``"texts"`` (a folder, .jsonl or .txt to embed)."""
    p = Path(path)
    if p.is_dir():
        return "texts"
    if not p.is_file():
        raise InvalidInputError(f"{p}: no such file or folder")
    with open(p, "rb") as fh:
        head = fh.read(16)
    if head == b"SQLite format 3\x00":
        return "index"
    if p.suffix.lower() in (".parquet", ".npy"):
        return "vectors"
    if p.suffix.lower() == ".jsonl":
        with open(p, encoding="utf-8", errors="replace") as fh:
            first = next((line for line in fh if line.strip()), "")
        try:
            row = json.loads(first) if first else None
        except json.JSONDecodeError:
            raise InvalidInputError(f"{p}: the first row is not JSON") from None
        return "vectors" if isinstance(row, dict) and "vector" in row else "texts"
    return "texts"


def load_source(path: str | os.PathLike, embedder: Any = None, *, show_progress: bool | None = None) -> MapSource:
    """Whichever source ``path`` is (:func:`source_kind`): an index, a vectors file, or a text collection (embedded
    with ``embedder``)."""
    kind = source_kind(path)
    if kind == "index":
        return from_index(path)
    if kind == "vectors":
        return from_vectors(path)
    if embedder is None:
        raise InvalidInputError(f"{path} is a text collection: it needs a model to embed it")
    return from_texts(path, embedder, show_progress=show_progress)
