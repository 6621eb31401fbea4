"""Parquet files of vectors: the one column layout and the one (atomic) writer and reader.

Used by :func:`multimodal_embed.distributed.embed_dataset` (shards), :meth:`ImageIndex.export
<multimodal_embed.ImageIndex.export>` and ``mmembed embed -o out.parquet``; read back by
:meth:`ImageIndex.add_embeddings <multimodal_embed.ImageIndex.add_embeddings>`. pyarrow is imported on use.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from ..imagefiles import utf8_text, write_atomic  # write_atomic: re-exported (one writer)

__all__ = ["OUTPUT_FORMATS", "PARQUET_MODEL_KEY", "arrow_vectors", "output_format", "read_shards", "shard_path",
           "shard_table", "write_atomic", "write_parquet", "write_vectors"]

# schema-metadata key under which Parquet files written by this package record the model identity (JSON)
PARQUET_MODEL_KEY = "multimodal_embed.model"


# -- vectors to a file, chosen by its suffix: the one rule of ``mmembed embed -o``, ``mmembed export`` and
# ``ImageIndex.export`` ---------------------------------------------------------------------------------------
OUTPUT_FORMATS = (".parquet", ".jsonl", ".npy")


def output_format(path: str | os.PathLike) -> str:
    """The format of an output file named ``path``: its suffix if it is one of :data:`OUTPUT_FORMATS`, else
    :class:`InvalidInputError` (CSV included: a vector does not fit a CSV cell; .jsonl and .parquet open in
    pandas)."""
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise InvalidInputError(f"{os.fspath(path)!r}: unknown output format {suffix or '(no suffix)'}: use .parquet, "
                                f".jsonl or .npy (.npy also writes NAME.npy.meta.jsonl with one row per vector)")
    return suffix


def _json_line(row: Mapping[str, Any], vector: Any = None) -> bytes:
    out = dict(row) if vector is None else {**row, "vector": [round(float(x), 7) for x in vector]}
    return (json.dumps(out) + "\n").encode("utf-8")


def write_vectors(rows: Sequence[Mapping[str, Any]], vectors: Any, output: str | os.PathLike, *,
                  identity: Mapping[str, Any] | None = None) -> Path:
    """One row of metadata per vector to ``output``, in the format its suffix names (:func:`output_format`),
    atomically: ``.jsonl`` (each row with its ``vector``), ``.npy`` (the matrix, and the rows as
    ``NAME.npy.meta.jsonl`` beside it) or ``.parquet`` (the rows' columns, ``path_bytes`` with each path's exact
    bytes, ``vector``, and the model ``identity`` in the schema metadata)."""
    fmt = output_format(output)
    mat = np.asarray(vectors, dtype=np.float32)
    if mat.ndim != 2 or len(mat) != len(rows):
        raise InvalidInputError(f"{len(rows)} rows but vectors of shape {mat.shape}")
    if fmt == ".jsonl":
        return write_atomic(output, lambda fh: fh.writelines(_json_line(r, v) for r, v in zip(rows, mat)))
    if fmt == ".npy":
        write_atomic(output, lambda fh: np.save(fh, mat))
        write_atomic(f"{os.fspath(output)}.meta.jsonl", lambda fh: fh.writelines(_json_line(r) for r in rows))
        return Path(output)
    columns: dict[str, Any] = {k: [r.get(k) for r in rows] for k in dict.fromkeys(k for r in rows for k in r)}
    if "path" in columns:  # Parquet strings are UTF-8: odd bytes of a name shown as \xNN, exact bytes beside
        columns["path_bytes"] = [None if p is None else os.fsencode(p) for p in columns["path"]]
        columns["path"] = [None if p is None else utf8_text(p) for p in columns["path"]]
    columns["vector"] = arrow_vectors(mat, mat.shape[1])
    return write_parquet(columns, output, identity=identity)


def arrow_vectors(mat: Any, dim: int, valid: Any = None) -> Any:
    """A ``(n, dim)`` float32 matrix as a pyarrow fixed-size-list column; rows where ``valid`` is False are null."""
    import pyarrow as pa

    flat = pa.array(np.ascontiguousarray(mat, dtype=np.float32).reshape(-1), pa.float32())
    mask = None if valid is None else pa.array(~np.asarray(valid, dtype=bool))
    return pa.FixedSizeListArray.from_arrays(flat, dim, mask=mask)


def write_parquet(table: Any, path: str | os.PathLike, *, identity: Mapping[str, Any] | None = None,
                  metadata: Mapping[str, str] | None = None) -> Path:
    """Write a pyarrow table (or a dict of columns) to ``path`` atomically (temporary file, then rename), with
    the model ``identity`` (and any extra ``metadata``) in the schema metadata when given; returns the path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not isinstance(table, pa.Table):
        table = pa.table(dict(table))
    if identity is not None or metadata:
        meta = dict(metadata or {})
        if identity is not None:
            meta[PARQUET_MODEL_KEY] = json.dumps(dict(identity), sort_keys=True)
        table = table.replace_schema_metadata(meta)
    out = Path(path)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, str(tmp))
        os.replace(tmp, out)  # the file is either complete or absent
    finally:
        tmp.unlink(missing_ok=True)
    return out


SHARD_INPUT_KEY = "multimodal_embed.shard_input"  # schema metadata: SHA-256 of the shard's input rows + settings


def shard_input_digest(items: Sequence[str], settings: Mapping[str, Any]) -> str:
    """What a shard was made from: its input items (in order) and the settings that change vectors (model
    request, kind, task, first row id)."""
    h = hashlib.sha256(json.dumps(dict(settings), sort_keys=True).encode("utf-8"))
    for item in items:
        h.update(b"\x00" + item.encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def shard_input_of(path: str | os.PathLike) -> str | None:
    """The input digest recorded in a shard's schema (``None`` if absent or unreadable)."""
    import pyarrow.parquet as pq

    try:
        meta = pq.read_schema(str(path)).metadata or {}
    except Exception:  # noqa: BLE001 - a damaged shard is recomputed
        return None
    value = meta.get(SHARD_INPUT_KEY.encode())
    return value.decode() if value else None


def shard_path(folder: str | os.PathLike, shard: int) -> Path:
    """``folder/part-NNNNN.parquet``."""
    return Path(folder) / f"part-{shard:05d}.parquet"


def shard_table(start: int, kind: str, items: Sequence[str], vectors: np.ndarray, status: Sequence[str],
                error: Sequence[str | None]) -> Any:
    """One shard's rows: ``id`` (from ``start``), ``text`` or ``path``, ``vector`` (null where failed), ``status``,
    ``error``."""
    import pyarrow as pa

    vec = arrow_vectors(vectors, vectors.shape[1], valid=[s == "ok" for s in status])
    return pa.table({"id": pa.array(range(start, start + len(items)), pa.int64()),
                     ("text" if kind == "texts" else "path"): pa.array(list(items), pa.string()),
                     "vector": vec, "status": pa.array(list(status), pa.string()),
                     "error": pa.array(list(error), pa.string())})


def read_shards(folder: str | os.PathLike) -> tuple[dict[str, Any], Any]:
    """(model identity, one pyarrow table of every shard, sorted by id)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted(Path(folder).glob("part-*.parquet"))
    if not files:
        raise InvalidInputError(f"{folder} has no part-*.parquet shards")
    tables = []
    for f in files:
        try:
            tables.append(pq.read_table(f))
        except Exception as exc:  # noqa: BLE001 - ArrowInvalid, OSError...: a truncated or overwritten shard
            raise InvalidInputError(f"{f}: not a readable Parquet shard ({type(exc).__name__}: {exc}); run "
                                    f"embed_dataset again on the same output to recompute it") from None
    identities = {(t.schema.metadata or {}).get(PARQUET_MODEL_KEY.encode()) for t in tables}
    if len(identities) != 1 or None in identities:
        raise InvalidInputError(f"{folder}: shards were written by different models")
    table = pa.concat_tables([t.replace_schema_metadata(None) for t in tables]).sort_by("id")
    return json.loads(identities.pop()), table
