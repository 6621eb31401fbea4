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
def in_process(embedders):
    pytest.importorskip("fastapi")
    import uvicorn

    from multimodal_embed.serving.app import create_app

    server = uvicorn.Server(uvicorn.Config(create_app(embedders=embedders), host="127.0.0.1", port=free_port(),
                                           log_level="warning"))
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
