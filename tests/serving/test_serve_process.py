"""``mmembed serve`` as a process: the command line, SIGTERM draining, and the Ray Serve deployment (two replicas)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from .conftest import httpx
from .process import start_server, stop_server

pytestmark = pytest.mark.slow


def test_cli_served_name_api_key_from_env_and_sigterm_drain(builtin):
    proc, url = start_server("--served-name", "mini", "--host", "0.0.0.0",
                             env={**os.environ, "MMEMBED_API_KEY": "k1"})
    key = {"Authorization": "Bearer k1"}
    try:
        assert httpx.get(f"{url}/v1/models").status_code == 401
        models = httpx.get(f"{url}/v1/models", headers=key).json()["data"]
        assert [m["id"] for m in models] == ["mini"]
        texts = [f"a long enough text number {i} " * 8 for i in range(1500)]
        result: dict[str, httpx.Response] = {}

        def slow_request() -> None:
            result["r"] = httpx.post(f"{url}/v1/embeddings", json={"model": "mini", "input": texts}, headers=key,
                                     timeout=120)

        t = threading.Thread(target=slow_request)
        t.start()
        time.sleep(1.0)  # the request is in flight
        proc.send_signal(signal.SIGTERM)
        t.join(120)
        _, err = proc.communicate(timeout=60)
        rc = proc.returncode
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 0, err
    assert "without an API key" not in err  # the key came from $MMEMBED_API_KEY
    r = result["r"]
    assert r.status_code == 200, r.text
    got = np.array([d["embedding"] for d in r.json()["data"][:3]], dtype=np.float32)
    np.testing.assert_allclose(got, builtin.embed_text(texts[:3]), atol=1e-6)


@pytest.mark.parametrize("host", ["0.0.0.0", ""])
def test_cli_warns_when_bound_beyond_loopback_without_a_key(host):
    """An empty host binds every interface, so it warns too; the normal start is a plain line, not a warning."""
    proc, _ = start_server("--host", host)
    rc, err = stop_server(proc)
    assert rc == 0 and "without an API key" in err, err
    start = [line for line in err.splitlines() if "http://" in line]
    assert start and start[0].startswith("mmembed serve: http://0.0.0.0:"), err
    assert "WARNING multimodal_embed.serving: mmembed serve" not in err


def test_cli_refuses_a_missing_model_folder(tmp_path):
    out = subprocess.run([sys.executable, "-m", "multimodal_embed.cli", "serve", "--model", str(tmp_path / "nope"),
                          "--served-name", "a", "--served-name", "b"], capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode != 0 and "served-name" in out.stderr


def test_ray_serve_two_replicas_answer_the_same(builtin, stamps):
    pytest.importorskip("ray.serve", reason="pip install 'ray[serve]'")
    from .conftest import data_uri

    proc, url = start_server("--ray", "--replicas", "2", env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
                             wait_s=300)
    try:
        texts = ["a cat", "a dog on a beach"]
        got = [httpx.post(f"{url}/v1/embeddings", json={"input": texts}, timeout=60) for _ in range(4)]
        for r in got:
            assert r.status_code == 200, r.text
            vec = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
            np.testing.assert_allclose(vec, builtin.embed_text(texts), atol=1e-6)
        img = httpx.post(f"{url}/v1/embeddings", json={"modality": "image", "input": [data_uri(stamps[0], "image/png")]},
                         timeout=60)
        np.testing.assert_allclose(img.json()["data"][0]["embedding"], builtin.embed_images([stamps[0]])[0], atol=1e-6)
        bad = httpx.post(f"{url}/v1/embeddings", json={"input": [1, 2]}, timeout=60)
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "token_ids_not_supported"
        pids = {httpx.get(f"{url}/health", timeout=30).json()["pid"] for _ in range(12)}
        assert len(pids) == 2, pids
    finally:
        rc, err = stop_server(proc)
    assert rc == 0, (rc, err[-2000:])
