"""mmembed serve against a real server on 127.0.0.1: the official ``openai`` client and httpx, answers compared with
the in-process verbs (<= 1e-6), every error class with its status and OpenAI's error shape, overload, disconnects,
deadlines, auth. The processes' own behaviour (SIGTERM, the CLI, Ray Serve) is in test_serve_process.py."""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time

import numpy as np
import pytest

from .conftest import data_uri, httpx, png_bytes, running

TOL = 1e-6


@pytest.fixture(scope="module")
def app(nomic, builtin, index_path):
    from multimodal_embed.serving import ServeConfig, create_app

    config = ServeConfig(index=str(index_path), max_body_bytes=2 * 1024 * 1024, max_images=8, max_labels=20)
    return create_app(config, embedders={"nomic": nomic, "builtin": builtin})


@pytest.fixture(scope="module")
def url(app):
    with running(app) as base:
        yield base


@pytest.fixture(scope="module")
def client(url):
    openai = pytest.importorskip("openai", reason="pip install openai")
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def post(url: str, route: str, body, **kw) -> httpx.Response:
    return httpx.post(f"{url}{route}", json=body, timeout=60, **kw)


def vectors(resp: httpx.Response) -> np.ndarray:
    assert resp.status_code == 200, resp.text
    data = resp.json()["data"]
    assert [d["index"] for d in data] == list(range(len(data)))
    return np.array([d["embedding"] for d in data], dtype=np.float32)


def assert_error(resp: httpx.Response, status: int, param: str | None = None, code: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["message"] and "Traceback" not in body["error"]["message"]
    if param is not None:
        assert body["error"]["param"] == param, body
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


TEXTS = ["a red bicycle", " ", "what is TSNE?", "x " * 40]  # (an empty string is refused: see test_empty_texts_...)


# -- the OpenAI contract ---------------------------------------------------------------------------------------
def test_openai_client_base64_and_float_equal_embed_text(client, nomic):
    ref = nomic.embed_text(TEXTS)
    default = client.embeddings.create(model="nomic", input=TEXTS)  # the client asks for base64 by default
    as_float = client.embeddings.create(model="nomic", input=TEXTS, encoding_format="float")
    for resp in (default, as_float):
        got = np.array([d.embedding for d in resp.data], dtype=np.float32)
        np.testing.assert_allclose(got, ref, atol=TOL)
        assert resp.model == "nomic" and resp.object == "list"
    assert default.usage.prompt_tokens == sum(nomic.count_tokens(TEXTS)) == default.usage.total_tokens


def test_dimensions_follow_the_matryoshka_recipe(client, nomic):
    resp = client.embeddings.create(model="nomic", input=TEXTS, dimensions=32)
    got = np.array([d.embedding for d in resp.data], dtype=np.float32)
    assert got.shape == (len(TEXTS), 32)
    np.testing.assert_allclose(got, nomic.embed_text(TEXTS, dimensionality=32), atol=TOL)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)


def test_a_single_string_and_the_builtin_model(url, builtin):
    got = vectors(post(url, "/v1/embeddings", {"model": "builtin", "input": "a cat"}))
    np.testing.assert_allclose(got, builtin.embed_text(["a cat"]), atol=TOL)


def test_task_and_input_type(url, nomic):
    q = vectors(post(url, "/v1/embeddings", {"model": "nomic", "input": TEXTS, "input_type": "query"}))
    np.testing.assert_allclose(q, nomic.embed_text(TEXTS, task="search_query"), atol=TOL)
    c = vectors(post(url, "/v1/embeddings", {"model": "nomic", "input": TEXTS, "task": "clustering"}))
    np.testing.assert_allclose(c, nomic.embed_text(TEXTS, task="clustering"), atol=TOL)
    assert np.abs(q - c).max() > 1e-3
    assert_error(post(url, "/v1/embeddings", {"model": "nomic", "input": "x", "input_type": "query",
                                              "task": "clustering"}), 400, "input_type")
    assert_error(post(url, "/v1/embeddings", {"model": "nomic", "input": "x", "task": "poetry"}), 400, "task")


def test_images_by_data_uri_mixed_with_texts(url, nomic, stamps):
    parts = [{"type": "text", "text": "a penguin"},
             {"type": "image_url", "image_url": {"url": data_uri(stamps[0], "image/png")}},
             {"type": "image_url", "image_url": {"url": data_uri(png_bytes(1), "image/png")}},
             {"type": "text", "text": "a fish"}]
    got = vectors(post(url, "/v1/embeddings", {"model": "nomic", "input": parts}))
    np.testing.assert_allclose(got[[0, 3]], nomic.embed_text(["a penguin", "a fish"]), atol=TOL)
    np.testing.assert_allclose(got[[1, 2]], nomic.embed_images([stamps[0], png_bytes(1)]), atol=TOL)
    # infinity's shape: "modality": "image" with a list of data URIs; base64 output
    resp = post(url, "/v1/embeddings", {"model": "nomic", "modality": "image", "encoding_format": "base64",
                                        "input": [data_uri(stamps[1], "image/png")]})
    assert resp.status_code == 200, resp.text
    raw = np.frombuffer(__import__("base64").b64decode(resp.json()["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(raw, nomic.embed_images([stamps[1]])[0], atol=TOL)
    assert resp.json()["usage"]["images"] == 1


def test_image_dimensions_use_the_cli_rule(url, nomic, stamps):
    got = vectors(post(url, "/v1/embeddings", {"model": "nomic", "modality": "image", "dimensions": 32,
                                               "input": [data_uri(stamps[2], "image/png")]}))
    full = nomic.embed_images([stamps[2]])[:, :32]
    np.testing.assert_allclose(got, full / np.linalg.norm(full, axis=1, keepdims=True), atol=TOL)


# -- errors --------------------------------------------------------------------------------------------------
def test_every_bad_request_is_a_4xx_in_the_openai_shape_and_the_next_good_one_works(url, nomic, tmp_path):
    e = "/v1/embeddings"
    assert_error(httpx.post(f"{url}{e}", content=b"{not json", timeout=10), 400)
    assert_error(post(url, e, {"model": "nomic"}), 400, "input")
    assert_error(post(url, e, {"model": "nomic", "input": []}), 400, "input")
    assert_error(post(url, e, {"model": "nomic", "input": [1, 2, 3]}), 400, "input", "token_ids_not_supported")
    assert_error(post(url, e, {"model": "nomic", "input": [[1, 2], [3]]}), 400, "input", "token_ids_not_supported")
    assert_error(post(url, e, {"model": "nomic", "input": ["a"] * 2049}), 400, "input", "too_many_inputs")
    assert_error(post(url, e, {"model": "nomic", "input": ["a", 5]}), 400, "input[1]")
    assert_error(post(url, e, {"model": "gpt-4", "input": "a"}), 404, "model", "model_not_found")
    assert_error(post(url, e, {"model": "builtin", "input": "a", "dimensions": 64}), 400, "dimensions")
    assert_error(post(url, e, {"model": "nomic", "input": "a", "dimensions": 8}), 400, "dimensions")
    assert_error(post(url, e, {"model": "nomic", "input": "a", "encoding_format": "hex"}), 400,
                 "encoding_format")
    lone = b'{"model": "nomic", "input": ["ok", "\\ud800 lone"]}'  # a JSON escape Python decodes to a lone surrogate
    assert_error(httpx.post(f"{url}{e}", content=lone, timeout=10), 400, "input[1]")
    # images: never a local path or file: URL; URLs only when the operator allows fetching; corrupt data named
    secret = tmp_path / "secret.png"
    secret.write_bytes(png_bytes(2))
    for ref in (str(secret), f"file://{secret}", "../../etc/passwd"):
        err = assert_error(post(url, e, {"model": "nomic", "modality": "image", "input": [ref]}), 400, "input[0]")
        assert "never read" in err["message"]
    assert_error(post(url, e, {"model": "nomic", "modality": "image", "input": ["http://127.0.0.1:9/x.png"]}),
                 400, "input[0]", "url_fetch_disabled")
    assert_error(post(url, e, {"model": "nomic", "modality": "image", "input": ["data:image/png;base64,!!!"]}),
                 400, "input[0]")
    err = assert_error(post(url, e, {"model": "nomic", "input": [
        "ok", {"type": "image_url", "image_url": {"url": data_uri(b"GIF89a truncated", "image/gif")}}]}),
        400, "input[1]", "invalid_image")
    assert "could not be read" in err["message"]
    assert_error(post(url, e, {"model": "nomic", "input": [{"type": "audio", "data": "x"}]}), 400, "input[0]")
    assert_error(post(url, e, {"model": "nomic", "modality": "image",
                               "input": [data_uri(png_bytes(3), "image/png")] * 9}), 400, "input", "too_many_images")
    # the body cap (2 MiB here) is checked before parsing
    assert_error(httpx.post(f"{url}{e}", content=b"x" * (3 * 1024 * 1024), timeout=30), 413)
    assert_error(httpx.get(f"{url}/v1/nothing-here"), 404)
    assert_error(httpx.get(f"{url}{e}"), 405)
    # still serving
    np.testing.assert_allclose(vectors(post(url, e, {"model": "nomic", "input": ["fine"]})),
                               nomic.embed_text(["fine"]), atol=TOL)


def test_unknown_fields_are_refused_naming_the_field_on_every_route(url, stamps):
    image = data_uri(stamps[0], "image/png")
    for route, body, field in (
            ("/v1/embeddings", {"model": "nomic", "input": "a", "inptu_type": "query"}, "inptu_type"),
            ("/v1/embeddings", {"input": "a", "dimension": 32}, "dimension"),
            ("/v1/search", {"query": "a penguin", "k": 3}, "k"),
            ("/v1/search", {"query": "a penguin", "min-score": 0.2}, "min-score"),
            ("/v1/classify", {"model": "nomic", "images": [image], "labels": ["a", "b"], "topk": 1}, "topk")):
        err = assert_error(post(url, route, body), 400, field, "unknown_field")
        assert repr(field) in err["message"] and "model" in err["message"], err  # the fields it takes are listed
    # the fields OpenAI's client sends are all known
    assert post(url, "/v1/embeddings", {"model": "nomic", "input": "a", "user": "u1", "encoding_format": "float",
                                        "dimensions": 32}).status_code == 200


def test_empty_texts_are_refused_as_openai_does(url):
    e = "/v1/embeddings"
    err = assert_error(post(url, e, {"model": "nomic", "input": ""}), 400, "input[0]", "invalid_input")
    assert "empty" in err["message"]
    assert_error(post(url, e, {"model": "nomic", "input": ["fine", "", "also fine"]}), 400, "input[1]")
    assert_error(post(url, e, {"model": "builtin", "input": [{"type": "text", "text": ""}]}), 400, "input[0]")
    assert_error(post(url, "/v1/search", {"query": ""}), 400, "query")
    assert post(url, e, {"model": "nomic", "input": [" "]}).status_code == 200  # blank is a text, empty is none


def test_search_errors_name_the_query_and_min_score_is_a_cosine(url):
    lone = b'{"query": "\\ud800 lone"}'  # a JSON escape Python decodes to a lone surrogate
    err = assert_error(httpx.post(f"{url}/v1/search", content=lone, timeout=10), 400, "query")
    assert "input" not in err["message"]
    for bad in ("NaN", "Infinity", "-Infinity", "1.5", "-1.01", "1e309"):
        body = b'{"query": "a penguin", "min_score": %s}' % bad.encode()
        assert_error(httpx.post(f"{url}/v1/search", content=body, timeout=10), 400, "min_score")
    hits = post(url, "/v1/search", {"query": "a penguin", "top_k": 20, "min_score": -1.0}).json()["data"]
    assert len(hits) == 12
    assert post(url, "/v1/search", {"query": "a penguin", "min_score": 1.0}).json()["data"] == []


def test_over_long_texts_are_refused_unless_truncation_is_asked(url, builtin):
    long_text = "word " * 600  # the built-in model's context is 256 tokens
    err = assert_error(post(url, "/v1/embeddings", {"model": "builtin", "input": ["short", long_text]}), 400,
                       "input[1]", "context_length_exceeded")
    assert "256" in err["message"]
    resp = post(url, "/v1/embeddings", {"model": "builtin", "input": ["short", long_text], "truncate": True})
    np.testing.assert_allclose(vectors(resp), builtin.embed_text(["short", long_text]), atol=TOL)
    assert resp.json()["usage"]["prompt_tokens"] == 3 + 256


# -- search, classify, models, health, metrics ---------------------------------------------------------------
def test_search_by_text_and_by_image_equals_the_index(url, nomic, index_path, stamps):
    from multimodal_embed import ImageIndex

    with ImageIndex.open(index_path, nomic) as index:
        ref = index.search("a penguin", 5, texts_only=True)
        ref_img = index.search(nomic.embed_images([stamps[3]])[0], 3)
        ref_filtered = index.search("a penguin", 20, texts_only=True, path_filter="*/a/*")
    got = post(url, "/v1/search", {"query": "a penguin", "top_k": 5}).json()["data"]
    assert [h["path"] for h in got] == [h.path for h in ref]
    np.testing.assert_allclose([h["score"] for h in got], [h.score for h in ref], atol=TOL)
    assert all(isinstance(h["id"], int) for h in got)
    part = {"type": "image_url", "image_url": {"url": data_uri(stamps[3], "image/png")}}
    got = post(url, "/v1/search", {"query": part, "top_k": 3}).json()["data"]
    assert [h["path"] for h in got] == [h.path for h in ref_img] and got[0]["score"] > 0.999
    got = post(url, "/v1/search", {"query": "a penguin", "top_k": 20, "filter": "*/a/*"}).json()["data"]
    assert [h["path"] for h in got] == [h.path for h in ref_filtered] and all("/a/" in h["path"] for h in got)
    # a query that names a file on the server is text, never read
    got = post(url, "/v1/search", {"query": str(stamps[3]), "top_k": 1}).json()["data"]
    assert got[0]["score"] < 0.999
    assert_error(post(url, "/v1/search", {"query": "x", "model": "builtin"}), 400, "model")
    assert_error(post(url, "/v1/search", {"query": 5}), 400, "query")
    assert_error(post(url, "/v1/search", {"query": "x", "top_k": 0}), 400, "top_k")


def test_classify_equals_the_classifier(url, nomic, stamps):
    from multimodal_embed import ZeroShotClassifier

    labels = ["a penguin", "a fish", "a tree"]
    ref = ZeroShotClassifier(nomic, labels, "simple").predict([stamps[0], stamps[4]], top_k=2)
    images = [data_uri(stamps[0], "image/png"), data_uri(b"not an image", "image/png"),
              data_uri(stamps[4], "image/png")]
    resp = post(url, "/v1/classify", {"model": "nomic", "images": images, "labels": labels, "templates": "simple",
                                      "top_k": 2})
    assert resp.status_code == 200, resp.text
    data = resp.json()["data"]
    assert "images[1]" in data[1]["error"] and "predictions" not in data[1]
    for got, want in zip((data[0], data[2]), ref):
        assert [p["label"] for p in got["predictions"]] == [p.label for p in want]
        np.testing.assert_allclose([p["probability"] for p in got["predictions"]],
                                   [p.probability for p in want], atol=1e-5)
    assert_error(post(url, "/v1/classify", {"images": images[:1], "labels": ["a", "a"]}), 400, "labels")
    assert_error(post(url, "/v1/classify", {"images": images[:1], "labels": [f"l{i}" for i in range(21)]}), 400,
                 "labels", "too_many_labels")
    # a label is embedded once per template: a long one is refused, a bad one never reaches (and fails) a batch
    assert_error(post(url, "/v1/classify", {"images": images[:1], "labels": ["a", "b" * 1001]}), 400, "labels[1]")
    lone = b'{"images": ["%s"], "labels": ["fine", "\\ud800 lone"]}' % images[0].encode()
    assert_error(httpx.post(f"{url}/v1/classify", content=lone, timeout=30), 400, "labels[1]")


def test_models_health_and_metrics(url, nomic):
    models = {m["id"]: m for m in httpx.get(f"{url}/v1/models").json()["data"]}
    assert set(models) == {"nomic", "nomic:query", "builtin"}  # the query side of the prefixed model
    assert models["nomic:query"]["task"] == "search_query" and models["nomic"]["task"] == "search_document"
    assert models["builtin"]["max_text_tokens"] == 254  # 256 less [CLS] and [SEP]
    assert models["nomic"]["object"] == "model" and models["nomic"]["dimensions"] == nomic.dim
    assert models["nomic"]["matryoshka_dimensions"] and models["builtin"]["matryoshka_dimensions"] == []
    assert models["nomic"]["modalities"] == ["text", "image"] and models["builtin"]["max_input_tokens"] == 256
    health = httpx.get(f"{url}/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert set(health.json()["models"]) == {"nomic", "builtin"}
    text = httpx.get(f"{url}/metrics").text
    for name in ("mmembed_requests_total", "mmembed_request_seconds_bucket", "mmembed_queue_items",
                 "mmembed_batch_size_bucket", "mmembed_tokens_total", "mmembed_images_total"):
        assert name in text, name
    assert 'route="/v1/embeddings",status="400"' in text


# -- batching and load ---------------------------------------------------------------------------------------
def _metric(url: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_concurrent_single_text_requests_are_batched_and_exact(url, nomic):
    texts = [f"document number {i} about {'cats' if i % 2 else 'the sea'}" + " more" * (i % 7) for i in range(96)]
    ref = nomic.embed_text(texts, task="search_query")
    calls_before = _metric(url, "mmembed_batch_size_count", model="nomic", kind="text")
    items_before = _metric(url, "mmembed_batch_size_sum", model="nomic", kind="text")

    def one(i: int) -> np.ndarray:
        return vectors(post(url, "/v1/embeddings", {"model": "nomic", "input": texts[i], "input_type": "query"}))[0]

    with cf.ThreadPoolExecutor(32) as pool:
        got = np.stack(list(pool.map(one, range(len(texts)))))
    np.testing.assert_allclose(got, ref, atol=TOL)
    calls = _metric(url, "mmembed_batch_size_count", model="nomic", kind="text") - calls_before
    items = _metric(url, "mmembed_batch_size_sum", model="nomic", kind="text") - items_before
    assert items == len(texts)
    assert calls < len(texts), f"{len(texts)} requests ran as {calls:.0f} model calls: no batching"


@pytest.fixture
def blocked(app):
    """Hold the model thread of 'nomic' (a slow batch, made deterministic) until the test (or teardown) releases it."""
    import asyncio

    state = app.state.mmembed
    release = threading.Event()
    batcher = state.models["nomic"].batcher
    asyncio.run_coroutine_threadsafe(batcher.run_in_model_thread(lambda: release.wait(30)), batcher._task.get_loop())
    time.sleep(0.1)
    yield state, release
    release.set()
    time.sleep(0.1)


def test_health_and_metrics_answer_while_a_batch_runs(url, blocked):
    t0 = time.monotonic()
    assert httpx.get(f"{url}/health", timeout=10).status_code == 200
    assert httpx.get(f"{url}/metrics", timeout=10).status_code == 200
    assert time.monotonic() - t0 < 5


def test_the_health_probe_drives_the_model_from_its_own_thread_only(url, blocked):
    """While the model thread runs a batch, /health reports it busy (no probe from a second thread); a batch that
    runs past the request deadline makes the model unhealthy."""
    state, release = blocked
    state.health_cache = None
    body = httpx.get(f"{url}/health", timeout=10).json()
    assert body["status"] == "ok" and "busy_s" in body["models"]["nomic"] and "ms" in body["models"]["builtin"]
    assert not [t.name for t in threading.enumerate() if "health" in t.name]
    old, state.config.request_timeout_s = state.config.request_timeout_s, 0.3
    try:
        time.sleep(0.4)
        state.health_cache = None
        r = httpx.get(f"{url}/health", timeout=10)
        assert r.status_code == 503 and r.json()["models"]["nomic"]["ok"] is False, r.text
    finally:
        state.config.request_timeout_s = old
    release.set()
    time.sleep(0.2)
    state.health_cache = None
    r = httpx.get(f"{url}/health", timeout=10)
    assert r.status_code == 200 and "ms" in r.json()["models"]["nomic"], r.text


def test_queue_overflow_sheds_with_429_and_recovers(url, nomic, blocked):
    state, release = blocked
    batcher = state.models["nomic"].batcher
    # one request of 4 texts fills a batch (it waits for the held model thread), 3 more fill the queue of 12 items:
    # the other 6 of 10 are shed at once
    saved = batcher.max_queue, batcher.max_batch_texts
    batcher.max_queue, batcher.max_batch_texts = 12, 4
    try:
        with cf.ThreadPoolExecutor(10) as pool:
            futures = [pool.submit(post, url, "/v1/embeddings", {"model": "nomic", "input": [f"t{i}"] * 4})
                       for i in range(10)]
            deadline = time.monotonic() + 60
            while sum(f.done() for f in futures) < 6 or batcher.queued_items < 12:
                assert time.monotonic() < deadline, [f.done() for f in futures]
                time.sleep(0.05)
            time.sleep(0.2)
            shed = [f.result() for f in futures if f.done()]
            release.set()
            results = [f.result() for f in futures]
    finally:
        batcher.max_queue, batcher.max_batch_texts = saved
    assert len(shed) == 6, [r.status_code for r in shed]
    for r in shed:
        assert_error(r, 429, code="queue_full")
        assert r.headers["retry-after"] == "1"
    ok = [(i, r) for i, r in enumerate(results) if r.status_code == 200]
    assert len(ok) == 4 and all(r.status_code in (200, 429) for r in results)
    for i, r in ok:
        np.testing.assert_allclose(vectors(r), nomic.embed_text([f"t{i}"] * 4), atol=TOL)
    assert _metric(url, "mmembed_shed_requests_total", model="nomic") >= 6
    assert _metric(url, "mmembed_requests_total", route="/v1/embeddings", status="500") == 0


def test_a_client_that_disconnects_has_its_queued_work_cancelled(url, blocked):
    before = _metric(url, "mmembed_cancelled_work_total", model="nomic", reason="disconnect")
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{url}/v1/embeddings", json={"model": "nomic", "input": ["going away"]}, timeout=0.5)
    deadline = time.monotonic() + 5
    while _metric(url, "mmembed_cancelled_work_total", model="nomic", reason="disconnect") == before:
        assert time.monotonic() < deadline, "the disconnect was not noticed"
        time.sleep(0.05)
    assert blocked[0].models["nomic"].batcher.queued_items == 0


def test_the_deadline_drops_queued_work(url, blocked):
    state, _ = blocked
    old, state.config.request_timeout_s = state.config.request_timeout_s, 0.5
    try:
        resp = post(url, "/v1/embeddings", {"model": "nomic", "input": ["late"]})
    finally:
        state.config.request_timeout_s = old
    assert_error(resp, 503, code="deadline_exceeded")
    assert state.models["nomic"].batcher.queued_items == 0
    assert _metric(url, "mmembed_cancelled_work_total", model="nomic", reason="deadline") >= 1


def test_cancelled_requests_log_no_never_retrieved_error(url, blocked, caplog):
    import gc
    import logging

    state, _ = blocked
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        old, state.config.request_timeout_s = state.config.request_timeout_s, 0.3
        try:
            assert_error(post(url, "/v1/embeddings", {"model": "nomic", "input": ["late", "later"]}), 503,
                         code="deadline_exceeded")
        finally:
            state.config.request_timeout_s = old
        with pytest.raises(httpx.TimeoutException):  # and one that goes away
            httpx.post(f"{url}/v1/embeddings", json={"model": "nomic", "input": ["gone"]}, timeout=0.3)
        time.sleep(0.5)
        gc.collect()
        time.sleep(0.1)
    noise = [r.getMessage() for r in caplog.records if "never retrieved" in r.getMessage()]
    assert not noise, noise


def test_classify_label_work_is_queued_with_the_deadline_and_shedding(url, blocked, stamps):
    """New labels' prompts are queued text work: a held model makes them miss the deadline (503, dropped from the
    queue) instead of blocking; a full queue sheds them with 429."""
    state, release = blocked
    batcher = state.models["nomic"].batcher
    image = data_uri(stamps[0], "image/png")
    body = {"model": "nomic", "images": [image], "labels": [f"a new label {i}" for i in range(6)]}  # 6 x 80 prompts
    old, state.config.request_timeout_s = state.config.request_timeout_s, 0.5
    try:
        t0 = time.monotonic()
        assert_error(post(url, "/v1/classify", body), 503, code="deadline_exceeded")
        assert time.monotonic() - t0 < 5
    finally:
        state.config.request_timeout_s = old
    assert batcher.queued_items == 0
    saved = batcher.max_queue
    batcher.max_queue = 100
    try:
        with cf.ThreadPoolExecutor(2) as pool:
            first = pool.submit(post, url, "/v1/embeddings", {"model": "nomic", "input": ["taken into a batch"]})
            time.sleep(0.3)
            queued = pool.submit(post, url, "/v1/embeddings", {"model": "nomic", "input": ["queued"]})
            deadline = time.monotonic() + 10
            while batcher.queued_items < 1:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            r = post(url, "/v1/classify", body)
            assert_error(r, 429, code="queue_full")
            release.set()
            assert first.result().status_code == 200 and queued.result().status_code == 200
    finally:
        batcher.max_queue = saved
    r = post(url, "/v1/classify", body)  # the model is free again: the same labels are embedded and answered
    assert r.status_code == 200, r.text
    assert len(r.json()["data"][0]["predictions"]) == 5


def test_classify_caps_the_label_prompts_of_a_request(nomic, stamps):
    from multimodal_embed import ZeroShotClassifier
    from multimodal_embed.serving import ServeConfig, create_app

    image = data_uri(stamps[2], "image/png")
    with running(create_app(ServeConfig(max_items=50), embedders={"nomic": nomic})) as base:
        err = assert_error(post(base, "/v1/classify", {"images": [image], "labels": ["a cat"]}), 400, "labels",
                           "too_many_labels")
        assert "80" in err["message"]  # one label x the 80 openai-imagenet templates
        labels = [f"thing {i}" for i in range(70)]
        assert_error(post(base, "/v1/classify", {"images": [image], "labels": labels, "templates": "none"}), 400,
                     "labels", "too_many_labels")
        first = post(base, "/v1/classify", {"images": [image], "labels": labels[:40], "templates": "none"})
        assert first.status_code == 200, first.text
        # 40 of the 70 were embedded before: 30 new prompts fit, and the answer equals the library's
        r = post(base, "/v1/classify", {"images": [image], "labels": labels, "templates": "none", "top_k": 3})
        assert r.status_code == 200, r.text
        want = ZeroShotClassifier(nomic, labels, "none").predict([stamps[2]], top_k=3)[0]
        got = r.json()["data"][0]["predictions"]
        assert [p["label"] for p in got] == [p.label for p in want]
        np.testing.assert_allclose([p["probability"] for p in got], [p.probability for p in want], atol=1e-5)


# -- auth ----------------------------------------------------------------------------------------------------
def test_api_key(builtin):
    from multimodal_embed.serving import ServeConfig, create_app

    app = create_app(ServeConfig(api_key="s3cret"), embedders={"builtin": builtin})
    with running(app) as base:
        assert httpx.get(f"{base}/health").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            assert_error(httpx.post(f"{base}/v1/embeddings", json={"input": "a"}, headers=headers), 401,
                         code="invalid_api_key")
            assert_error(httpx.get(f"{base}/metrics", headers=headers), 401)
            assert_error(httpx.get(f"{base}/v1/models", headers=headers), 401)
        openai = pytest.importorskip("openai")
        good = openai.OpenAI(base_url=f"{base}/v1", api_key="s3cret", max_retries=0)
        got = good.embeddings.create(model="builtin", input=["a cat"])
        np.testing.assert_allclose(got.data[0].embedding, builtin.embed_text(["a cat"])[0], atol=TOL)
        bad = openai.OpenAI(base_url=f"{base}/v1", api_key="nope", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.embeddings.create(model="builtin", input=["a cat"])
        key = {"Authorization": "Bearer s3cret"}
        assert_error(httpx.post(f"{base}/v1/search", json={"query": "x"}, headers=key), 404, code="no_index")


def test_importing_the_package_and_the_cli_loads_no_server_dependency():
    import subprocess
    import sys

    code = ("import sys, multimodal_embed, multimodal_embed.cli; multimodal_embed.cli.build_parser(); "
            "print(sorted(m for m in ('fastapi', 'uvicorn', 'prometheus_client', 'starlette') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_health_is_503_while_loading_or_after_a_failed_load(tmp_path):
    from multimodal_embed.serving import ModelSource, ServeConfig, create_app

    (tmp_path / "empty").mkdir()
    app = create_app(ServeConfig(models=[ModelSource(model=str(tmp_path / "empty"))]))
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.02)
        base = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
        deadline = time.monotonic() + 30
        while (health := httpx.get(f"{base}/health")).json()["status"] == "loading":
            assert health.status_code == 503 and time.monotonic() < deadline
            time.sleep(0.05)
        assert health.status_code == 503 and health.json()["status"] == "failed"
        assert "empty" in health.json()["error"]
        err = assert_error(post(base, "/v1/embeddings", {"input": "a"}), 503, code="not_ready")
        assert "failed to load" in err["message"]
    finally:
        server.should_exit = True
        thread.join(30)


def test_tiny_and_odd_images_are_embedded(url, nomic):
    import io

    from PIL import Image

    blobs = []
    for mode, size in (("RGB", (1, 1)), ("L", (3, 500)), ("RGBA", (20, 20)), ("P", (7, 7))):
        buf = io.BytesIO()
        Image.new(mode, size).save(buf, format="PNG")
        blobs.append(buf.getvalue())
    got = vectors(post(url, "/v1/embeddings", {"model": "nomic", "modality": "image",
                                               "input": [data_uri(b, "image/png") for b in blobs]}))
    np.testing.assert_allclose(got, nomic.embed_images(blobs), atol=TOL)


def test_urls_are_fetched_only_when_the_operator_allows_it(builtin, stamps, tmp_path):
    import functools
    import http.server

    from multimodal_embed.serving import ServeConfig, create_app

    (tmp_path / "s.png").write_bytes(stamps[0].read_bytes())
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None
    files = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=files.serve_forever, daemon=True).start()
    image_url = f"http://127.0.0.1:{files.server_address[1]}/s.png"
    try:
        app = create_app(ServeConfig(allow_url_fetch=True), embedders={"builtin": builtin})
        with running(app) as base:
            part = {"type": "image_url", "image_url": {"url": image_url}}
            got = vectors(post(base, "/v1/embeddings", {"input": [part]}))
            np.testing.assert_allclose(got, builtin.embed_images([stamps[0]]), atol=TOL)
            missing = {"type": "image_url", "image_url": {"url": image_url.replace("s.png", "nope.png")}}
            assert_error(post(base, "/v1/embeddings", {"input": [part, missing]}), 400, "input[1]", "invalid_image")
            local = {"type": "image_url", "image_url": {"url": str(tmp_path / "s.png")}}
            assert_error(post(base, "/v1/embeddings", {"input": [local]}), 400, "input[0]")
    finally:
        files.shutdown()
