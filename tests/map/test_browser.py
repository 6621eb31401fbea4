"""The map page in a real browser (Playwright + Debian's Chromium), with every network request refused: points,
cluster labels, a hover thumbnail, a grey point for an unreadable image and a placed query are checked in pixels.

Needs /usr/bin/chromium and the built-in model; skipped otherwise. Screenshots go to test-artifacts/ (or
$MMEMBED_ARTIFACTS).
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.map.conftest import KNOWN

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(os.environ.get("MMEMBED_ARTIFACTS", ROOT / "test-artifacts"))
ERROR_GREY = (127, 127, 127)

pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium")]


@pytest.fixture(scope="module")
def page_map(tmp_path_factory, known_folder, builtin):
    """A map of the known classes (its own index), one photo overwritten with garbage after indexing."""
    from multimodal_embed import ImageIndex
    from multimodal_embed.map import build_map, from_index, write_html

    root = tmp_path_factory.mktemp("browser")
    shutil.copytree(known_folder, root / "photos")
    with ImageIndex.create(root / "p.mmindex", builtin) as index:
        index.add_folder(root / "photos", show_progress=False)
    bad = root / "photos" / "coffee" / "03.jpg"
    bad.write_bytes(b"garbage, not a JPEG any more")
    result = build_map(from_index(root / "p.mmindex"), builtin, labels=list(KNOWN.values()), vocabulary=None,
                       layout="pca", queries=["a red apple"], min_cluster_size=3, show_progress=False)
    return result, write_html(result, root / "map.html"), result.items.index(str(bad))


def _open(pw, path: Path, requests: list[str], console: list[str]):
    browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless=new"])
    page = browser.new_page(viewport={"width": 1000, "height": 700})

    def route(r):
        requests.append(r.request.url)
        if r.request.url.startswith(("file:", "data:")):
            r.continue_()
        else:
            r.abort()

    page.route("**/*", route)
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    page.goto(path.as_uri())
    page.wait_for_function("window.mmembedMap !== undefined")
    page.wait_for_timeout(300)  # thumbnails decode
    return browser, page


def _shot(page, name: str) -> np.ndarray:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    png = page.screenshot(path=str(ARTIFACTS / name))
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def _at(img: np.ndarray, xy: list[float]) -> np.ndarray:
    return img[round(xy[1]), round(xy[0])]


def test_points_labels_grey_point_hover_thumbnail_and_query_render_offline(page_map):
    from playwright.sync_api import sync_playwright

    result, path, bad = page_map
    requests: list[str] = []
    console: list[str] = []
    with sync_playwright() as pw:
        browser, page = _open(pw, path, requests, console)
        try:
            img = _shot(page, "map-overview.png")  # few points: their thumbnails are drawn on the map
            page.uncheck("#pictures")
            page.uncheck("#labels")
            dots = _shot(page, "map-points.png")
            # every point is drawn in a point colour (its cluster's, or that of a point drawn over it)
            palette = page.evaluate("window.mmembedMap.colours") + ["#cbd5e1"]
            colours = {tuple(int(c[k:k + 2], 16) for k in (1, 3, 5)) for c in palette} | {ERROR_GREY}
            for i in range(len(result.items)):
                got = tuple(int(v) for v in _at(dots, page.evaluate(f"window.mmembedMap.screen({i})")))
                assert got in colours, (i, got)
            own = [i for i in range(len(result.items)) if result.cluster_ids[i] >= 0 and i != bad]
            hit = sum(tuple(int(v) for v in _at(dots, page.evaluate(f"window.mmembedMap.screen({i})")))
                      == tuple(int(palette[result.cluster_ids[i] % (len(palette) - 1)][k:k + 2], 16) for k in (1, 3, 5))
                      for i in own)
            assert hit >= len(own) // 2  # most show their own cluster's colour
            assert (np.abs(img - dots).sum(axis=2) > 60).sum() > 20_000  # the thumbnails cover a real area
            page.check("#pictures")
            page.check("#labels")
            # the unreadable photo is a grey point
            assert tuple(_at(img, page.evaluate(f"window.mmembedMap.screen({bad})"))) == ERROR_GREY
            # cluster labels: the pixels around each label change when labels are switched off
            named = [c for c in result.clusters if c.name != "unnamed"]
            assert named
            page.uncheck("#labels")
            bare = _shot(page, "map-no-labels.png")
            page.check("#labels")
            for c in named:
                x0, y0 = page.evaluate(f"window.mmembedMap.screenXY({c.x}, {c.y})")
                box = (slice(max(0, int(y0) - 8), int(y0) + 8), slice(max(0, int(x0) - 30), int(x0) + 30))
                assert (np.abs(img[box] - bare[box]).sum(axis=2) > 100).sum() > 20, c.name
            # hover: the tooltip shows the point's own thumbnail
            probe = next(i for i, t in enumerate(result.thumbnails) if t)
            page.mouse.move(*page.evaluate(f"window.mmembedMap.screen({probe})"))
            page.wait_for_selector("#tip-img", state="visible")
            page.wait_for_function("document.getElementById('tip-img').naturalWidth > 0")
            shown = page.text_content("#tip-name")
            hovered = result.items.index(shown)
            box = page.locator("#tip-img").bounding_box()
            tip = _shot(page, "map-hover.png")
            inside = tip[int(box["y"]) + 2:int(box["y"] + box["height"]) - 2, int(box["x"]) + 2:int(box["x"] +
                                                                                                   box["width"]) - 2]
            with Image.open(io.BytesIO(result.thumbnails[hovered])) as th:
                want = np.asarray(th.convert("RGB")).reshape(-1, 3).mean(axis=0)
            assert inside.size and np.abs(inside.reshape(-1, 3).mean(axis=0) - want).max() < 20
            assert inside.std() > 5  # a picture, not a flat box
            # the bad photo's tooltip gives its reason
            page.mouse.move(*page.evaluate(f"window.mmembedMap.screen({bad})"))
            page.wait_for_function("document.getElementById('tip-error').textContent.length > 0")
            assert "cannot read" in page.text_content("#tip-error")
            # a query embedded at build time goes on the map: a red marker where it was placed
            page.mouse.move(1, 690)
            page.fill("#search", "a red apple")
            page.press("#search", "Enter")
            page.wait_for_function("document.getElementById('status').textContent.includes('placed')")
            q = result.queries[0]
            mark = _shot(page, "map-query.png")
            assert tuple(_at(mark, page.evaluate(f"window.mmembedMap.screenXY({q.x}, {q.y})"))) == (225, 29, 72)
            # zoom: the same point moves away from the centre
            before = page.evaluate(f"window.mmembedMap.screen({probe})")
            page.evaluate("window.mmembedMap.zoom(3)")
            after = page.evaluate(f"window.mmembedMap.screen({probe})")
            assert before != after
        finally:
            browser.close()
    assert all(u.startswith(("file:", "data:")) for u in requests), requests
    assert not console, console
