"""Request bodies from slow, stalled or hostile clients (multimodal_embed/serving/body.py and the middleware): read
only after the API key, never on a keyless route, bounded in time (stalls and trickles are answered 408 and their
connection closed, so they cannot hold the slots keyed clients need) and in what parsing them costs (subprocess
peak RSS under an address-space cap). Every stall here is bounded by socket timeouts of a few seconds."""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from .conftest import httpx, running

KEY = "s3cret"
AUTH = f"Authorization: Bearer {KEY}\r\n"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def guarded(nomic):
    """A keyed server with short body timeouts and 4 request slots."""
    from multimodal_embed.serving import ServeConfig, create_app

    app = create_app(ServeConfig(api_key=KEY, max_inflight=4, body_idle_s=0.6, body_timeout_s=1.5,
                                 header_timeout_s=1.0, max_body_bytes=1 << 20), embedders={"nomic": nomic})
    with running(app) as base:
        yield base, app.state.mmembed


@contextmanager
def connect(base: str, timeout: float = 5.0):
    parts = urlsplit(base)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
    try:
        yield sock
    finally:
        sock.close()


def read_until_closed(sock: socket.socket, limit_s: float = 5.0) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took (fails on a stall)."""
    t0, out = time.monotonic(), b""
    sock.settimeout(limit_s)
    while True:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            pytest.fail(f"the server kept the connection open for {limit_s} s; got {out[:300]!r}")
        except ConnectionResetError:  # closed with bytes of ours still unread: a reset, which may cut the answer
            return out, time.monotonic() - t0
        if not chunk:
            return out, time.monotonic() - t0
        out += chunk


def status_and_body(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        size, _, rest = body.partition(b"\r\n")
        body = rest[:int(size, 16)]
    return status, json.loads(body)


def keyed(base: str, **kw) -> httpx.Response:
    return httpx.post(f"{base}/v1/embeddings", json={"input": "a cat"}, headers={"Authorization": f"Bearer {KEY}"},
                      timeout=10, **kw)


# -- /health takes no body; nothing is read before the key -------------------------------------------------------
@pytest.mark.parametrize("method", ["POST", "GET", "PUT"])
@pytest.mark.parametrize("framing,start", [("Content-Length: 10000000\r\n", b"{" * 100),
                                           ("Transfer-Encoding: chunked\r\n", b"989680\r\n" + b"{" * 100)])
def test_a_body_on_a_keyless_route_is_refused_unread_and_the_connection_closed(guarded, method, framing, start):
    base, _ = guarded
    with connect(base) as sock:
        sock.sendall(f"{method} /health HTTP/1.1\r\nHost: x\r\n{framing}\r\n".encode() + start)
        raw, took = read_until_closed(sock, 3.0)  # never waits for the 10 MB it announced
    status, body = status_and_body(raw)
    assert status == 400 and body["error"]["code"] == "body_not_allowed", raw[:400]
    assert took < 2.0


@pytest.mark.parametrize("path", ["/v1/embeddings", "/v1/classify", "/nowhere", "/v1/models"])
def test_a_keyless_body_is_refused_before_a_byte_is_read(guarded, path):
    base, _ = guarded
    with connect(base) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 500000\r\n\r\n".encode())
        raw, took = read_until_closed(sock, 3.0)
    status, body = status_and_body(raw)
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    assert took < 2.0


def test_stalled_keyless_health_bodies_hold_no_slot(guarded):
    base, state = guarded
    socks = []
    try:
        for _ in range(12):  # three times the 4 slots
            s = socket.create_connection((urlsplit(base).hostname, urlsplit(base).port), timeout=5)
            s.sendall(b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n{")
            socks.append(s)
        time.sleep(0.2)
        assert state.inflight == 0
        r = keyed(base)
        assert r.status_code == 200, r.text
    finally:
        for s in socks:
            s.close()


# -- stalls and trickles: 408 and closed ---------------------------------------------------------------------------
@pytest.mark.parametrize("announced,sent", [(1000, 10), (200_000, 100_000), (50, 0)])
def test_a_keyed_body_shorter_than_its_content_length_is_timed_out(guarded, announced, sent):
    base, _ = guarded
    with connect(base) as sock:
        sock.sendall(f"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n{AUTH}Content-Length: {announced}\r\n\r\n".encode()
                     + b" " * sent)
        raw, took = read_until_closed(sock, 5.0)
    status, body = status_and_body(raw)
    assert status == 408 and body["error"]["code"] == "body_timeout", raw[:400]
    assert 0.5 < took < 2.5


def test_a_chunked_body_with_no_end_is_cut_at_the_budget(guarded):
    """Chunks keep coming (each within the idle timeout), but the body never ends: the 1.5 s budget closes it."""
    base, _ = guarded
    with connect(base) as sock:
        sock.sendall(f"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n{AUTH}Transfer-Encoding: chunked\r\n\r\n".encode())
        t0 = time.monotonic()
        sock.settimeout(0.05)
        raw = b""
        while time.monotonic() - t0 < 5:
            try:
                sock.sendall(b"1\r\n \r\n")
            except OSError:  # closed by the server
                break
            try:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                raw += chunk
            except TimeoutError:
                pass
            time.sleep(0.2)
        took = time.monotonic() - t0
    status, body = status_and_body(raw)
    assert status == 408 and body["error"]["code"] == "body_timeout", raw[:400]
    assert 1.2 < took < 3.0


def test_stalled_keyed_bodies_free_their_slots_for_keyed_clients(guarded):
    base, state = guarded
    host, port = urlsplit(base).hostname, urlsplit(base).port
    socks = [socket.create_connection((host, port), timeout=5) for _ in range(4)]
    try:
        for s in socks:
            s.sendall(f"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n{AUTH}Content-Length: 100\r\n\r\n{{".encode())
        deadline = time.monotonic() + 3
        while state.inflight < 4:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert keyed(base).status_code == 429  # the 4 slots are held ...
        with cf.ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(read_until_closed, socks))
        assert all(status_and_body(raw)[0] == 408 for raw, _ in answers)
        r = keyed(base)  # ... but only until their body timeout
        assert r.status_code == 200, r.text
        assert state.inflight == 0
    finally:
        for s in socks:
            s.close()


@pytest.mark.parametrize("sent", [b"", b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n", b"GET /hea"])
def test_a_connection_whose_headers_stall_is_closed(guarded, sent):
    base, _ = guarded
    with connect(base) as sock:
        sock.sendall(sent)
        raw, took = read_until_closed(sock, 5.0)
    assert raw == b"" and 0.8 < took < 3.0


def test_headers_trickled_a_byte_at_a_time_are_cut_at_the_budget(guarded):
    base, _ = guarded
    request = f"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n{AUTH}X-Pad: {'a' * 100}\r\n".encode()
    with connect(base) as sock:
        t0 = time.monotonic()
        try:
            for byte in request:  # each byte well within uvicorn's keep-alive timeout, the whole far past 1 s
                sock.sendall(bytes([byte]))
                time.sleep(0.05)
        except OSError:
            pass
        raw, _ = read_until_closed(sock, 5.0)
        took = time.monotonic() - t0
    assert raw == b"" and took < 4.0


def test_the_header_deadline_restarts_after_each_answer(guarded):
    """A keep-alive connection that sends its next request in time is served; then idles, and is closed."""
    base, _ = guarded
    with connect(base) as sock:
        for _ in range(3):
            time.sleep(0.6)  # each gap under the 1 s deadline, the three together over it
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            head = sock.recv(65536)
            assert head.startswith(b"HTTP/1.1 200"), head[:200]
        _, took = read_until_closed(sock, 5.0)
    assert took < 3.0


def test_a_body_over_the_cap_is_refused_and_the_connection_closed(guarded):
    base, _ = guarded
    with connect(base) as sock:  # no Content-Length: counted while it arrives
        sock.sendall(f"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n{AUTH}Transfer-Encoding: chunked\r\n\r\n".encode())
        chunk = b"x" * 65536
        try:
            for _ in range(40):  # 2.5 MB against a 1 MB cap
                sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        except OSError:
            pass
        raw, _ = read_until_closed(sock, 5.0)
    assert not raw or status_and_body(raw)[0] == 413  # (the reset of a closed socket may beat the answer)


def test_normal_and_keep_alive_requests_still_work(guarded, nomic):
    base, _ = guarded
    with httpx.Client(headers={"Authorization": f"Bearer {KEY}"}, timeout=10) as client:
        for text in ("a cat", "a dog", "a fish"):  # one connection, three requests
            r = client.post(f"{base}/v1/embeddings", json={"input": text})
            assert r.status_code == 200, r.text
        assert client.get(f"{base}/health").status_code == 200


# -- JSON: what parsing may cost --------------------------------------------------------------------------------
def test_json_value_count_ignores_strings_and_counts_structure():
    from multimodal_embed.serving.body import check_json_size
    from multimodal_embed.serving.schemas import ApiError

    check_json_size(json.dumps({"input": ["a,b:c[{" * 10_000] * 10}).encode(), 100)  # structure inside strings
    check_json_size(json.dumps({"input": ['say \\"a,b,c\\" twice'] * 10}).encode(), 100)  # escaped quotes
    for body in ([{}] * 200, [0] * 200, {"a": [[[]]] * 60}, [""] * 200):
        with pytest.raises(ApiError) as err:
            check_json_size(json.dumps(body).encode(), 100)
        assert err.value.status == 413 and err.value.code == "body_too_complex"


MEMORY_SCRIPT = """
import threading, time, urllib.request, urllib.error
import uvicorn
from multimodal_embed import Embedder
from multimodal_embed.serving import ServeConfig, create_app

fixtures, kind, mb = sys.argv[1], sys.argv[2], float(sys.argv[3])
emb = Embedder.from_pretrained(text=fixtures + "/text-v1.5-tiny", device="cpu")
app = create_app(ServeConfig(max_body_bytes=64 << 20), embedders={"tiny": emb})
server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="critical"))
threading.Thread(target=server.run, daemon=True).start()
while not server.started:
    time.sleep(0.02)
url = "http://127.0.0.1:%d/v1/embeddings" % server.servers[0].sockets[0].getsockname()[1]
n = int(mb * 1e6)
junk = {"dicts": "{}," * (n // 3), "zeros": "0," * (n // 2), "strings": '"a",' * (n // 4),
        "lists": "[[]]," * (n // 5)}[kind]
body = ('{"input": "a cat", "junk": [' + junk + '0]}').encode()
def post(data):
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        return urllib.request.urlopen(req, timeout=120).status
    except urllib.error.HTTPError as exc:
        return exc.code
post(b'{"input": "a cat", "junk": [{}, 0, "a", [[]]]}')  # warm the code paths (not the heap: a big body would)
before = start(3000)
status = post(body)
print(json.dumps({"status": status, "grew_mb": peak_mb() - before, "body_mb": len(body) / 1e6}))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status and sets RLIMIT_AS")
@pytest.mark.parametrize("kind,mb", [("dicts", 20), pytest.param("zeros", 12, marks=pytest.mark.slow),
                                     pytest.param("strings", 8, marks=pytest.mark.slow),
                                     pytest.param("lists", 16, marks=pytest.mark.slow)])
def test_a_json_body_costs_about_its_size_not_twenty_times(fixtures_dir, kind, mb):
    """Python objects cost 50-100 bytes per JSON value: before the cap, 20 MB of ``{}`` grew the server by 520 MB."""
    from tests.test_hardening_round2 import PROLOGUE

    proc = subprocess.run([sys.executable, "-c", PROLOGUE + textwrap.dedent(MEMORY_SCRIPT), str(fixtures_dir), kind,
                           str(mb)], env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["status"] == 413, out
    assert out["grew_mb"] < 2.5 * out["body_mb"] + 20, out  # the body read (and one copy); 63dec33: +93 to +573 MB
