"""The image index: :class:`ImageIndex` (SQLite + memory-mapped vector files), folder scanning, search kernels,
vector quantization (int8, binary) and Parquet shards.

Modules: :mod:`.imageindex` (the index), :mod:`.scanning` (what changed in a folder), :mod:`.search` (exact and
approximate top-k, query mixes, duplicate groups), :mod:`.shards` (vector files: Parquet, JSONL, NPY).
"""

from __future__ import annotations

from .imageindex import (
    IMAGE_EXTENSIONS,
    SCHEMA_VERSION,
    SEARCH_CHUNK_ROWS,
    ImageIndex,
    IndexReport,
    SearchHit,
    _migrate,
    exact_search,
    failure_stamp,
    parse_query,
    query_kind,
)

__all__ = ["IMAGE_EXTENSIONS", "SCHEMA_VERSION", "SEARCH_CHUNK_ROWS", "ImageIndex", "IndexReport", "SearchHit",
           "_migrate", "exact_search", "failure_stamp", "parse_query", "query_kind"]
