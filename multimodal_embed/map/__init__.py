"""See a whole collection at once: a 2-D map, clustered and named offline, as one HTML file and a Parquet table.

>>> from multimodal_embed.map import build_map, load_source, write_html
>>> source = load_source("photos.mmindex")            # an index, a vectors file, or a text collection (+ a model)
>>> result = build_map(source, embedder, queries=["a dog on a beach"])
>>> write_html(result, "photos.html")                 # opens anywhere, no network

``mmembed map`` on the command line. Layout (UMAP, PCA without umap-learn) in :mod:`.layout`, clusters and names
in :mod:`.clusters`, thumbnails in :mod:`.thumbs`, the page in :mod:`.html`, Parquet in :mod:`.export`. The
optional libraries come with ``pip install 'multimodal-embed[map]'``; names are imported on first use.
"""

from __future__ import annotations

from typing import Any

_LAZY = {"build_map": ".build", "MapResult": ".build", "place_queries": ".build",
         "MapSource": ".sources", "load_source": ".sources", "from_index": ".sources", "from_vectors": ".sources",
         "from_texts": ".sources", "layout_2d": ".layout", "find_clusters": ".clusters",
         "write_html": ".html", "render_html": ".html", "write_map_parquet": ".export"}

__all__ = ["MapResult", "MapSource", "build_map", "find_clusters", "from_index", "from_texts", "from_vectors",
           "layout_2d", "load_source", "place_queries", "render_html", "write_html", "write_map_parquet"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'multimodal_embed.map' has no attribute {name!r}")
