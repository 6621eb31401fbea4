"""One self-contained HTML file for a map: the data as inline JSON, the viewer (``viewer.js``, shipped with the
package) inlined, thumbnails as base64 JPEG. Nothing is fetched when it is opened."""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path
from typing import Any

from .build import MapResult

MAX_ITEM_CHARS = 300  # a text is shown cut to this many characters on hover

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; \
script-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
html, body { margin: 0; height: 100%; font: 14px system-ui, sans-serif; color: #111827; }
#bar { position: absolute; top: 0; left: 0; right: 0; height: 44px; display: flex; gap: 8px; align-items: center;
       padding: 0 10px; background: #f8fafc; border-bottom: 1px solid #e5e7eb; box-sizing: border-box; }
#bar form { display: flex; gap: 4px; }
#search { width: 260px; padding: 4px 6px; }
#status { color: #4b5563; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; flex: 1; }
#map { position: absolute; top: 44px; left: 0; width: 100%; height: calc(100% - 44px); cursor: crosshair; }
#tip { position: absolute; display: none; pointer-events: none; background: #fff; border: 1px solid #d1d5db;
       border-radius: 4px; padding: 6px; max-width: 280px; box-shadow: 0 2px 8px rgba(0,0,0,.15); margin-top: 44px; }
#tip img { display: block; max-width: 128px; max-height: 128px; width: 128px; height: auto;
           image-rendering: auto; margin-bottom: 4px; }
#tip-name { word-break: break-all; font-size: 12px; }
#tip-label { color: #374151; font-size: 12px; }
#tip-error { color: #b91c1c; font-size: 12px; }
</style></head>
<body>
<div id="bar">
<strong>__TITLE__</strong>
<form id="search-form"><input id="search" list="queries" placeholder="search: a query embedded at build time"
 autocomplete="off"><datalist id="queries"></datalist><button type="submit">Find</button></form>
<button id="zoom-in" title="zoom in">+</button><button id="zoom-out" title="zoom out">&minus;</button>
<button id="reset" title="show everything (or double-click)">fit</button>
<label><input type="checkbox" id="labels" checked> labels</label>
<label title="thumbnails on the map when zoomed in to a few hundred points"><input type="checkbox" id="pictures"
 checked> pictures</label>
<span id="status"></span>
</div>
<canvas id="map"></canvas>
<div id="tip"><img id="tip-img" alt=""><div id="tip-name"></div><div id="tip-label"></div><div id="tip-error"></div></div>
<script type="application/json" id="map-data">__DATA__</script>
<script>__SCRIPT__</script>
</body></html>
"""


def _script_safe(text: str) -> str:
    """JSON that cannot end the ``<script>`` element it sits in (``</script>``, ``<!--``) or break JS parsing."""
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _link(kind: str, item: str) -> str:
    if kind != "image":
        return ""
    try:
        return Path(os.path.abspath(item)).as_uri()
    except ValueError:
        return ""


def map_payload(result: MapResult) -> dict[str, Any]:
    """What the viewer reads (``#map-data``)."""
    from ..imagefiles import printable

    kind = result.kind
    shown = [printable(x) if kind == "image" else x[:MAX_ITEM_CHARS] for x in result.items]
    names = {cl.id: cl.name for cl in result.clusters}
    n_err = sum(e is not None for e in result.errors)
    summary = (f"{len(result.items):,} {'images' if kind == 'image' else 'texts'}"
               + (f" (a sample of {result.total_items:,})" if result.sampled else "")
               + f" · {len(result.clusters)} clusters named by {result.naming}"
               + f" · layout: {result.layout_method}" + ("" if result.layout_method == "umap"
                                                          else f" ({result.layout_reason})")
               + (f" · {n_err} unreadable (grey)" if n_err else ""))
    return {
        "title": result.title, "kind": kind, "summary": summary,
        "x": [round(float(v), 4) for v in result.xy[:, 0]], "y": [round(float(v), 4) for v in result.xy[:, 1]],
        "c": [int(c) for c in result.cluster_ids],
        "clusters": [cl.to_dict() for cl in result.clusters],
        "clusterName": {str(k): v for k, v in names.items()},
        "items": shown,
        "links": [_link(kind, x) for x in result.items],
        "thumbs": {str(i): base64.b64encode(t).decode("ascii") for i, t in enumerate(result.thumbnails) if t},
        "err": {str(i): e for i, e in enumerate(result.errors) if e is not None},
        "queries": [{"text": q.text, "x": q.x, "y": q.y, "neighbours": q.neighbours} for q in result.queries],
    }


def render_html(result: MapResult) -> str:
    script = (Path(__file__).with_name("viewer.js")).read_text(encoding="utf-8")
    data = _script_safe(json.dumps(map_payload(result), ensure_ascii=False, separators=(",", ":"),
                                   allow_nan=False))
    title = html.escape(f"{result.title} · mmembed map")
    return _PAGE.replace("__TITLE__", title).replace("__SCRIPT__", script).replace("__DATA__", data)


def write_html(result: MapResult, path: str | os.PathLike) -> Path:
    """Write the map's page to ``path`` atomically; returns the path."""
    from ..index.shards import write_atomic

    page = render_html(result).encode("utf-8")
    return write_atomic(path, lambda fh: fh.write(page))
