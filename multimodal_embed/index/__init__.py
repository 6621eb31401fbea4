"""The image index: :class:`ImageIndex` (SQLite + memory-mapped vector files), folder scanning, search kernels,
vector quantization (int8, binary) and Parquet shards.

Modules: :mod:`.imageindex` (the index), :mod:`.scanning` (what changed in a folder), :mod:`.search` (exact and
approximate top-k, query mixes, duplicate groups), :mod:`.shards` (vector files: Parquet, JSONL, NPY).
"""

from __future__ import annotations

__all__ = ["IMAGE_EXTENSIONS", "SCHEMA_VERSION", "SEARCH_CHUNK_ROWS", "ImageIndex", "IndexReport", "SearchHit",
           "_migrate", "exact_search", "failure_stamp", "parse_query", "query_kind"]


def __getattr__(name: str) -> object:
    """The index's names, imported on first use: ``multimodal_embed.index.shards`` and the other light modules
    load without the index class (and without torch, which it imports)."""
    if name in __all__:
        from . import imageindex

        return getattr(imageindex, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
