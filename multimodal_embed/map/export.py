"""A map as Parquet, for embedding-atlas (``pip install embedding-atlas``) and any dataframe tool.

``NAME.parquet``: one row per point: ``x``, ``y``, ``cluster`` (-1: none), ``label`` (its cluster's name),
``path`` (images) or ``text`` (texts), ``id``, ``thumbnail`` (JPEG bytes, null when none), ``error`` (why the image
could not be read), ``score`` (the cluster name's probability or score). ``NAME.labels.parquet``: one row per cluster
(``x``, ``y``, ``text``, ``priority``: the size), embedding-atlas's label table. Open both with::

    embedding-atlas NAME.parquet --x x --y y --image thumbnail --text label --labels NAME.labels.parquet
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import MissingDependencyError
from .build import MapResult


def labels_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p.with_name(f"{p.stem}.labels.parquet")


def write_map_parquet(result: MapResult, path: str | os.PathLike) -> tuple[Path, Path]:
    """Write the points to ``path`` and the cluster labels beside it (:func:`labels_path`), atomically; returns
    both paths."""
    try:
        import pyarrow as pa
    except ImportError as exc:
        raise MissingDependencyError("the Parquet export needs pyarrow: pip install pyarrow") from exc
    from ..imagefiles import utf8_text
    from ..index.shards import write_parquet

    names = {cl.id: cl.name for cl in result.clusters}
    scores = {cl.id: cl.score for cl in result.clusters}
    column = "path" if result.kind == "image" else "text"
    items = [utf8_text(x) if result.kind == "image" else x for x in result.items]
    table = pa.table({
        "x": pa.array(result.xy[:, 0], pa.float32()), "y": pa.array(result.xy[:, 1], pa.float32()),
        "cluster": pa.array(result.cluster_ids, pa.int32()),
        "label": pa.array([names.get(int(c), "") for c in result.cluster_ids], pa.string()),
        "score": pa.array([scores.get(int(c)) for c in result.cluster_ids], pa.float32()),
        column: pa.array(items, pa.string()),
        "id": pa.array(result.ids, pa.string()),
        "thumbnail": pa.array(result.thumbnails or [None] * len(items), pa.binary()),
        "error": pa.array(result.errors or [None] * len(items), pa.string()),
    })
    meta = {"multimodal_embed.map": f"layout={result.layout_method}; naming={result.naming}"}
    out = write_parquet(table, path, metadata=meta)
    labels = pa.table({"x": pa.array([cl.x for cl in result.clusters], pa.float32()),
                       "y": pa.array([cl.y for cl in result.clusters], pa.float32()),
                       "text": pa.array([cl.name for cl in result.clusters], pa.string()),
                       "priority": pa.array([cl.size for cl in result.clusters], pa.int64())})
    return out, write_parquet(labels, labels_path(path))
