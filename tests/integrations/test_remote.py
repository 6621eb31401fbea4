"""base_url=: the adapters embed through an ``mmembed serve`` service (OpenAI-compatible /v1/embeddings).

The service runs in this process (the tiny nomic pair, so the task prefixes are checked over HTTP) and, in the
slow test, as ``python -m multimodal_embed.cli serve --model minilm-efficientnet-lite0`` in a subprocess.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import numpy as np
import pytest

from multimodal_embed.errors import ImageDecodeError, InvalidInputError
from multimodal_embed.integrations.common import RemoteEmbedError

from .conftest import TEXTS, close

httpx = pytest.importorskip("httpx")


class Requests:
    """The JSON bodies an adapter's HTTP client sent."""

    def __init__(self, backend):
        self.bodies: list[dict] = []
        backend._client.event_hooks["request"].append(lambda r: self.bodies.append(json.loads(r.read())))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def in_process(embedders, config=None):
    pytest.importorskip("fastapi")
    import uvicorn

    from multimodal_embed.serving.app import create_app

    server = uvicorn.Server(uvicorn.Config(create_app(config, embedders=embedders), host="127.0.0.1",
                                           port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.config.port}"
    _wait(url, thread.is_alive)
    try:
        yield f"{url}/v1"
    finally:
        server.should_exit = True
        thread.join(30)


def _wait(url, alive):
    deadline = time.monotonic() + 120
    while True:
        assert alive(), "the server stopped"
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the server did not become healthy"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def tiny_service(nomic_pair):
    with in_process({"tiny": nomic_pair}) as url:
        yield url


def test_texts_with_their_prefixes_and_images_one_request_per_batch(tiny_service, nomic_pair, photos):
    from multimodal_embed.integrations.langchain import MultimodalEmbeddings

    emb = MultimodalEmbeddings(base_url=tiny_service, model="tiny")
    sent = Requests(emb.backend)
    assert close(emb.embed_documents(TEXTS), nomic_pair.embed_text(TEXTS, task="search_document"))
    assert close(emb.embed_query("a cat"), nomic_pair.embed_text(["a cat"], task="search_query")[0])
    assert close(emb.embed_image(photos), nomic_pair.embed_images(photos))
    assert len(sent.bodies) == 3  # one request per call, never one per item
    assert [b["task"] for b in sent.bodies[:2]] == ["search_document", "search_query"]
    assert sent.bodies[0]["input"] == TEXTS and sent.bodies[0]["model"] == "tiny"
    assert all(p["type"] == "image_url" and p["image_url"]["url"].startswith("data:image/jpeg;base64,")
               for p in sent.bodies[2]["input"])


def test_a_bad_image_refused_by_the_service_is_named_and_the_good_ones_stored(tiny_service, nomic_pair, photos,
                                                                              not_an_image, tmp_path):
    from langchain_core.vectorstores import InMemoryVectorStore

    from multimodal_embed.integrations.langchain import MultimodalEmbeddings, add_images

    store = InMemoryVectorStore(MultimodalEmbeddings(base_url=tiny_service))
    sent = Requests(store.embeddings.backend)
    missing = str(tmp_path / "missing.jpg")
    with pytest.raises(ImageDecodeError) as err:
        add_images(store, [photos[0], not_an_image, photos[1], missing], ids=["a", "bad", "b", "gone"])
    message = str(err.value)
    assert "notes.jpg" in message and "'bad'" in message and "missing.jpg" in message and "'gone'" in message
    assert sorted(store.store) == ["a", "b"]
    assert close(np.array([store.store[i]["vector"] for i in "ab"]), nomic_pair.embed_images(photos[:2]))
    assert len(sent.bodies) == 2  # refused once (naming input[1]), then the good ones


def test_chroma_and_lancedb_through_the_service(tiny_service, nomic_pair, photos, tmp_path):
    chromadb = pytest.importorskip("chromadb")
    lancedb = pytest.importorskip("lancedb")
    from lancedb.embeddings import get_registry
    from lancedb.pydantic import LanceModel, Vector

    from multimodal_embed.integrations.chroma import MultimodalEmbeddingFunction
    from multimodal_embed.integrations.lancedb import MultimodalEmbedFunction

    ef = MultimodalEmbeddingFunction(base_url=tiny_service, dimensions=64)
    config = ef.get_config()
    assert config["base_url"] == tiny_service and "api_key" not in config
    assert MultimodalEmbeddingFunction.build_from_config(config).get_config() == config
    col = chromadb.PersistentClient(path=str(tmp_path / "chroma")).create_collection("remote", embedding_function=ef)
    col.add(ids=["t0", "t1"], documents=TEXTS[:2])
    got = col.get(ids=["t0", "t1"], include=["embeddings"])
    assert close(np.asarray(got["embeddings"]), nomic_pair.embed_text(TEXTS[:2], task="search_document"))
    from PIL import Image

    with Image.open(photos[0]) as im:
        array = np.asarray(im.convert("RGB"))
    col.add(ids=["i0"], images=[array])  # sent as a lossless PNG
    got = col.get(ids=["i0"], include=["embeddings"])
    assert close(np.asarray(got["embeddings"]), nomic_pair.embed_images([array]))

    func = get_registry().get("multimodal-embed").create(base_url=tiny_service, source="image")
    assert isinstance(func, MultimodalEmbedFunction) and func.ndims() == nomic_pair.dim

    class Photos(LanceModel):
        path: str = func.SourceField()
        vector: Vector(func.ndims()) = func.VectorField()

    tbl = lancedb.connect(tmp_path / "lance").create_table("p", schema=Photos)
    tbl.add([{"path": p} for p in photos[:3]])
    rows = {r["path"]: r["vector"] for r in tbl.to_arrow().to_pylist()}
    assert close([rows[p] for p in photos[:3]], nomic_pair.embed_images(photos[:3]))


def test_service_errors_are_clear(tiny_service):
    from multimodal_embed.integrations.llama_index import MultimodalEmbedding

    with pytest.raises(RemoteEmbedError, match="unknown") as err:
        MultimodalEmbedding(base_url=tiny_service, model="unknown").get_query_embedding("a cat")
    assert err.value.status == 404 or err.value.status == 400
    port = free_port()  # nothing listens there
    with pytest.raises(RemoteEmbedError, match=f"cannot reach http://127.0.0.1:{port}/v1/embeddings"):
        MultimodalEmbedding(base_url=f"http://127.0.0.1:{port}/v1", timeout=5).get_text_embedding("a cat")
    with pytest.raises(InvalidInputError, match="base_url"):
        MultimodalEmbedding(base_url="127.0.0.1:8000")
    with pytest.raises(InvalidInputError, match="device"):
        MultimodalEmbedding(base_url=tiny_service, device="cpu")


@pytest.mark.slow
def test_the_real_mmembed_serve_process(photos, tmp_path):
    """``mmembed serve`` with the built-in model, driven by LlamaIndex: vectors equal the local model's."""
    from llama_index.core.indices import MultiModalVectorStoreIndex
    from llama_index.core.schema import ImageNode, TextNode

    from multimodal_embed import Embedder
    from multimodal_embed.integrations.llama_index import MultimodalEmbedding

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "multimodal_embed.cli", "serve", "--model",
                             "minilm-efficientnet-lite0", "--port", str(port), "--device", "cpu"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        _wait(f"http://127.0.0.1:{port}", lambda: proc.poll() is None)
        emb = MultimodalEmbedding(base_url=f"http://127.0.0.1:{port}/v1", model="minilm-efficientnet-lite0")
        sent = Requests(emb._adapter.backend)
        nodes = [TextNode(text=t, id_=f"t{i}") for i, t in enumerate(TEXTS)]
        nodes += [ImageNode(image_path=p, id_=f"i{i}", metadata={"file_path": p}) for i, p in enumerate(photos)]
        index = MultiModalVectorStoreIndex(nodes, embed_model=emb, image_embed_model=emb)
        assert len(sent.bodies) == 2
        local = Embedder.from_pretrained("minilm-efficientnet-lite0", device="cpu")
        texts = np.array([index.vector_store.data.embedding_dict[f"t{i}"] for i in range(len(TEXTS))])
        images = np.array([index.image_vector_store.data.embedding_dict[f"i{i}"] for i in range(len(photos))])
        assert close(texts, local.embed_text(TEXTS, task="search_document"))
        assert close(images, local.embed_images(photos))
        hits = index.as_retriever(image_similarity_top_k=1).image_to_image_retrieve(photos[1])
        assert hits[0].node.node_id == "i1"
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def _finishes(fn, seconds=20):
    """fn() in a thread; its result, or a failure when it is still running after ``seconds`` (a hang)."""
    box = {}

    def run():
        try:
            box["out"] = fn()
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "the call hung"
    if "error" in box:
        raise box["error"]
    return box["out"]


def test_image_files_are_read_bounded_a_fifo_and_dev_zero_refused_at_once(tiny_service, nomic_pair, photos,
                                                                          tmp_path):
    """The remote path reads a local image itself (to send its bytes): a regular file only, to the loader's cap."""
    from multimodal_embed.images import URL_MAX_BYTES
    from multimodal_embed.integrations.common import make_adapter

    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)  # no writer: a plain open() waits forever
    sparse = tmp_path / "huge.png"
    with open(sparse, "wb") as fh:  # sparse: 3 GB on paper, nothing on disk
        fh.truncate(3 * 1024**3)
    adapter = make_adapter(base_url=tiny_service)
    items = [photos[0], str(fifo), "/dev/zero", str(sparse), photos[1]]
    batch = _finishes(lambda: adapter.images_with_errors(items))
    assert batch.indices == [0, 4]
    assert close(batch.vectors, nomic_pair.embed_images([photos[0], photos[1]]))
    reasons = {f.index: f.reason for f in batch.failures}
    assert sorted(reasons) == [1, 2, 3]
    assert "not a regular file" in reasons[1] and "not a regular file" in reasons[2]
    assert f"over {URL_MAX_BYTES} bytes" in reasons[3]
    with pytest.raises(ImageDecodeError, match="pipe.jpg"):
        _finishes(lambda: adapter.images([str(fifo)]))


def test_file_urls_are_local_paths(tiny_service, nomic_pair, photos):
    from pathlib import Path

    from multimodal_embed.integrations.langchain import MultimodalEmbeddings

    urls = [Path(p).resolve().as_uri() for p in photos[:2]]
    assert close(MultimodalEmbeddings(base_url=tiny_service).embed_image(urls), nomic_pair.embed_images(photos[:2]))
    assert close(MultimodalEmbeddings(embedder=nomic_pair).embed_image(urls), nomic_pair.embed_images(photos[:2]))
    with pytest.raises(ImageDecodeError, match="elsewhere"):
        MultimodalEmbeddings(embedder=nomic_pair).embed_image(["file://elsewhere/x.jpg"])


KEY = "sk-h40-" + "7f3a9c2e51d04b86"


@pytest.fixture(scope="module")
def keyed_service(nomic_pair):
    from multimodal_embed.serving.app import ServeConfig

    with in_process({"tiny": nomic_pair}, ServeConfig(api_key=KEY)) as url:
        yield url


def _files_holding(folder, needle: bytes) -> list[str]:
    hits = []
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as fh:
                if needle in fh.read():
                    hits.append(path)
    return hits


def test_api_key_argument_and_environment_variable_are_honoured(keyed_service, nomic_pair, monkeypatch):
    from multimodal_embed.integrations.langchain import MultimodalEmbeddings
    from multimodal_embed.integrations.llama_index import MultimodalEmbedding

    monkeypatch.delenv("MMEMBED_API_KEY", raising=False)
    with pytest.raises(RemoteEmbedError) as err:
        MultimodalEmbeddings(base_url=keyed_service).embed_query("a cat")
    assert err.value.status == 401
    want = nomic_pair.embed_text(["a cat"], task="search_query")[0]
    assert close(MultimodalEmbeddings(base_url=keyed_service, api_key=KEY).embed_query("a cat"), want)
    assert close(MultimodalEmbedding(base_url=keyed_service, api_key=KEY).get_query_embedding("a cat"), want)
    monkeypatch.setenv("MMEMBED_API_KEY", KEY)
    assert close(MultimodalEmbeddings(base_url=keyed_service).embed_query("a cat"), want)
    assert close(MultimodalEmbedding(base_url=keyed_service).get_query_embedding("a cat"), want)
    monkeypatch.delenv("MMEMBED_API_KEY")
    monkeypatch.setenv("MY_SERVICE_KEY", KEY)
    emb = MultimodalEmbedding(base_url=keyed_service, api_key_env_var="MY_SERVICE_KEY")
    assert close(emb.get_query_embedding("a cat"), want)
    assert KEY not in json.dumps(emb.to_dict()) and emb.to_dict()["api_key_env_var"] == "MY_SERVICE_KEY"


_REOPEN_LANCE = """
import json, sys
import lancedb
from lancedb.embeddings import get_registry
from lancedb.embeddings.base import UntrustedEmbeddingConfigError
import multimodal_embed.integrations.lancedb
folder, url = sys.argv[1], sys.argv[2]
tbl = lancedb.connect(folder).open_table("docs")
try:
    tbl.search("a cat").limit(1).to_list()
    refused = None
except UntrustedEmbeddingConfigError as exc:
    refused = str(exc)
get_registry().allow_endpoint(url)
tbl = lancedb.connect(folder).open_table("docs")
func = tbl.embedding_functions["vector"].function
print(json.dumps({"refused": refused, "query": func.compute_query_embeddings("a cat")[0].tolist(),
                  "hit": tbl.search("a cat").limit(1).to_list()[0]["text"]}))
"""

_REOPEN_CHROMA = """
import json, sys
import chromadb
import multimodal_embed.integrations.chroma
col = chromadb.PersistentClient(path=sys.argv[1]).get_collection("docs")
res = col.query(query_texts=["a cat"], n_results=2, include=["distances"])
print(json.dumps({"ids": res["ids"][0], "distances": res["distances"][0]}))
"""


def _reopen(script, *args, key=KEY):
    env = {k: v for k, v in os.environ.items() if k != "MMEMBED_API_KEY"}
    if key:
        env["MMEMBED_API_KEY"] = key
    proc = subprocess.run([sys.executable, "-c", script, *map(str, args)], check=False, capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_lancedb_never_stores_the_key_and_checks_the_endpoint_on_reopen(keyed_service, nomic_pair, tmp_path,
                                                                        monkeypatch):
    lancedb = pytest.importorskip("lancedb")
    from lancedb.embeddings import get_registry
    from lancedb.pydantic import LanceModel, Vector

    import multimodal_embed.integrations.lancedb  # noqa: F401

    monkeypatch.delenv("MMEMBED_API_KEY", raising=False)
    registry = get_registry().get("multimodal-embed")
    func = registry.create(base_url=keyed_service, api_key=KEY)  # honoured: without it every call is a 401
    assert func.endpoints() == [keyed_service]

    class Docs(LanceModel):
        text: str = func.SourceField()
        vector: Vector(func.ndims()) = func.VectorField()

    tbl = lancedb.connect(tmp_path / "lance").create_table("docs", schema=Docs)
    tbl.add([{"text": t} for t in TEXTS])
    # the key given as an option (the old way) is used and not stored either
    func2 = registry.create(base_url=keyed_service, options={"api_key": KEY})
    assert func2.options == {}
    tbl2 = lancedb.connect(tmp_path / "lance").create_table("docs2", schema=Docs)
    tbl2.add([{"text": TEXTS[0]}])
    assert _files_holding(tmp_path / "lance", KEY.encode()) == []
    assert _files_holding(tmp_path / "lance", b"MMEMBED_API_KEY")  # where the key comes from is recorded

    got = _reopen(_REOPEN_LANCE, tmp_path / "lance", keyed_service)
    assert got["refused"] and keyed_service in got["refused"] and "allow_endpoint" in got["refused"]
    assert close(got["query"], nomic_pair.embed_text(["a cat"], task="search_query")[0])
    assert got["hit"] in TEXTS


def test_chroma_collection_with_a_service_reopens_in_a_new_process_with_the_key_from_the_environment(
        keyed_service, nomic_pair, tmp_path, monkeypatch):
    chromadb = pytest.importorskip("chromadb")
    from multimodal_embed.integrations.chroma import MultimodalEmbeddingFunction

    monkeypatch.delenv("MMEMBED_API_KEY", raising=False)
    ef = MultimodalEmbeddingFunction(base_url=keyed_service, api_key=KEY)
    assert ef.get_config()["api_key_env_var"] == "MMEMBED_API_KEY" and KEY not in json.dumps(ef.get_config())
    col = chromadb.PersistentClient(path=str(tmp_path / "chroma")).create_collection("docs", embedding_function=ef)
    col.add(ids=[f"t{i}" for i in range(len(TEXTS))], documents=TEXTS)
    del col
    assert _files_holding(tmp_path / "chroma", KEY.encode()) == []
    got = _reopen(_REOPEN_CHROMA, tmp_path / "chroma")
    stored = nomic_pair.embed_text(TEXTS, task="search_document")
    qv = nomic_pair.embed_text(["a cat"], task="search_query")[0]
    want = {f"t{i}": 1.0 - float(stored[i] @ qv) for i in range(len(TEXTS))}
    assert close(got["distances"], [want[i] for i in got["ids"]], 1e-5)
