"""A map as a still picture (PIL): the points in their cluster colours and the cluster names, for places that show
an image rather than the HTML page (the demo's Map tab). :func:`point_at` finds the point under a click."""

from __future__ import annotations

from typing import Any

import numpy as np

from .build import MapResult

# the viewer's colours (viewer.js), so the picture and the page agree
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
           "#bcbd22", "#3b5bdb", "#f08c00", "#2b8a3e", "#c2255c", "#5f3dc4", "#0b7285", "#a61e4d")
NOISE, ERROR = "#cbd5e1", "#7f7f7f"


def pixel_positions(result: MapResult, width: int, height: int, points: np.ndarray | None = None,
                    margin: int = 24) -> np.ndarray:
    """The ``(x, y)`` pixels (y down, aspect kept) in a ``width x height`` picture of the map's points, or of
    other map coordinates ``points`` (cluster centres) in the same picture."""
    xy = np.asarray(result.xy, np.float64)
    if len(xy) == 0:
        return np.zeros((0, 2))
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    scale = min((width - 2 * margin) / span[0], (height - 2 * margin) / span[1])
    px = ((xy if points is None else np.asarray(points, np.float64).reshape(-1, 2)) - (lo + hi) / 2) * scale
    return np.stack([width / 2 + px[:, 0], height / 2 - px[:, 1]], axis=1)


def render_png(result: MapResult, width: int = 900, height: int = 640, *, labels: bool = True) -> Any:
    """The map as a PIL image: points (grey: unreadable images), then the named clusters' labels (``labels``)."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    pos = pixel_positions(result, width, height)
    r = max(2, min(6, int(60 / np.sqrt(max(len(pos), 1)))))
    order = np.argsort(result.cluster_ids >= 0, kind="stable")  # points in no cluster first, under the others
    for i in order:
        c = int(result.cluster_ids[i])
        colour = ERROR if result.errors and result.errors[i] else NOISE if c < 0 else PALETTE[c % len(PALETTE)]
        x, y = pos[i]
        draw.rectangle((x - r, y - r, x + r, y + r), fill=colour)
    try:
        font = ImageFont.load_default(size=15)
    except TypeError:  # Pillow < 10.1: the bitmap font
        font = ImageFont.load_default()
    if not labels:
        return img
    centres = pixel_positions(result, width, height, points=np.array([[c.x, c.y] for c in result.clusters]))
    for cl, (x, y) in zip(result.clusters, centres):
        if cl.name == "unnamed":
            continue
        text = cl.name if result.kind != "image" else f"{cl.name} {cl.score:.2f}"
        draw.text((x, y), text, fill="#111827", font=font, anchor="mm", stroke_width=3, stroke_fill="white")
    return img


def point_at(result: MapResult, width: int, height: int, x: float, y: float, radius: float = 12.0) -> int | None:
    """The row of the point nearest pixel ``(x, y)`` of :func:`render_png`'s picture, within ``radius``."""
    pos = pixel_positions(result, width, height)
    if len(pos) == 0:
        return None
    d = np.hypot(pos[:, 0] - x, pos[:, 1] - y)
    i = int(d.argmin())
    return i if d[i] <= radius else None
