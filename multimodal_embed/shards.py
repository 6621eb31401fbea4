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

from .errors import InvalidInputError

__all__ = ["PARQUET_MODEL_KEY", "arrow_vectors", "read_shards", "shard_path", "shard_table", "write_parquet"]

# schema-metadata key under which Parquet files written by this package record the model identity (JSON)
PARQUET_MODEL_KEY = "multimodal_embed.model"


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
    tables = [pq.read_table(f) for f in files]
    identities = {(t.schema.metadata or {}).get(PARQUET_MODEL_KEY.encode()) for t in tables}
    if len(identities) != 1 or None in identities:
        raise InvalidInputError(f"{folder}: shards were written by different models")
    table = pa.concat_tables([t.replace_schema_metadata(None) for t in tables]).sort_by("id")
    return json.loads(identities.pop()), table
