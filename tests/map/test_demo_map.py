"""The demo's Map tab: the index as a picture (the map's colours and names), a click on a point shows its
nearest images. The picture's geometry is checked directly; the click in a real browser (slow)."""

from __future__ import annotations

import shutil
import socket

import numpy as np
import pytest

from multimodal_embed.map.build import build_map
from multimodal_embed.map.picture import PALETTE, pixel_positions, point_at, render_png
from multimodal_embed.map.sources import MapSource
from tests.map.conftest import blobs

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_the_picture_draws_each_point_in_its_cluster_colour_and_clicks_find_it():
    x, _ = blobs(n_per=15, k=3, d=16)
    result = build_map(MapSource("text", [f"doc {i}" for i in range(45)], x), None, layout="pca",
                       min_cluster_size=4)
    img = np.asarray(render_png(result, 400, 300, labels=False)).astype(int)
    pos = pixel_positions(result, 400, 300)
    assert (pos >= 0).all() and (pos[:, 0] < 400).all() and (pos[:, 1] < 300).all()
    colours = [tuple(int(c[k:k + 2], 16) for k in (1, 3, 5)) for c in PALETTE]
    own = [colours[c % len(colours)] if c >= 0 else (203, 213, 225) for c in result.cluster_ids]
    assert sum(tuple(img[int(y), int(x)]) == want for (x, y), want in zip(pos, own)) >= 40  # a few overlap
    named = np.asarray(render_png(result, 400, 300)).astype(int)
    centres = pixel_positions(result, 400, 300, points=np.array([[c.x, c.y] for c in result.clusters]))
    for x, y in centres:  # each cluster's name is drawn at its centre
        box = named[int(y) - 6:int(y) + 6, int(x) - 20:int(x) + 20]
        assert (box.sum(axis=2) < 150).sum() > 10
    for i in (0, 17, 44):
        assert point_at(result, 400, 300, *pos[i]) in {j for j in range(45) if np.hypot(*(pos[j] - pos[i])) < 1}
    assert point_at(result, 400, 300, -500, -500) is None


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium")
def test_clicking_a_point_on_the_map_tab_shows_its_neighbours(known_index, builtin):
    from playwright.sync_api import sync_playwright

    from multimodal_embed import ImageIndex
    from multimodal_embed.demo import MAP_SIZE, build_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    index = ImageIndex.open(known_index, builtin)
    app = build_app(builtin, index)
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless=new"])
            page = browser.new_page(viewport={"width": 1200, "height": 1400})
            page.goto(f"http://127.0.0.1:{port}/")
            page.get_by_role("tab", name="Map").click()
            page.click("#map-button")
            page.wait_for_selector("#map-image img", timeout=300_000)
            page.wait_for_function("document.querySelector('#map-note').textContent.includes('clusters')",
                                   timeout=300_000)
            note = page.text_content("#map-note")
            assert "30 images" in note and "apple" in note
            img = page.locator("#map-image img")
            box = img.bounding_box()
            natural = page.evaluate("(() => { const i = document.querySelector('#map-image img');"
                                    " return [i.naturalWidth, i.naturalHeight]; })()")
            assert natural == list(MAP_SIZE)
            # the picture as drawn: scale from its pixels to the element's box (object-fit: contain)
            scale = min(box["width"] / natural[0], box["height"] / natural[1])
            ox = box["x"] + (box["width"] - natural[0] * scale) / 2
            oy = box["y"] + (box["height"] - natural[1] * scale) / 2
            from multimodal_embed.map.sources import from_index

            # where the demo draws the horse: its map is seeded, so the same vectors give the same layout
            src = from_index(known_index)
            row = next(i for i, p in enumerate(src.items) if "/horse/" in p)
            same = build_map(src, None, thumbnails=False, show_progress=False)
            pos = pixel_positions(same, *MAP_SIZE)[row]
            page.mouse.click(ox + pos[0] * scale, oy + pos[1] * scale)
            page.wait_for_function("document.querySelector('#map-selected').textContent.includes('Nearest')",
                                   timeout=120_000)
            assert "horse" in page.text_content("#map-selected")
            captions = page.locator("#map-neighbours").inner_text()
            assert "1.000" in captions and "horse" in captions
            browser.close()
    finally:
        app.close()
        index.close()
