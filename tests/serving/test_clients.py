"""The clients people already use, pointed at a real server on 127.0.0.1: the official ``openai`` client,
LangChain's ``OpenAIEmbeddings``, LlamaIndex's ``OpenAILikeEmbedding``, Chroma's ``OpenAIEmbeddingFunction`` and the
``cohere`` client. Through each client's documented query path the vectors are ``embed_text(task="search_query")``
(1e-6); documents are ``search_document``; long texts follow the server's and the request's ``long_text``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from .conftest import data_uri, httpx, running

DOCS = ["a red bicycle leaning on a wall", "a cat asleep on a sofa", "the city skyline at night"]
QUERY = "where is the cat?"
KEY = "test-key"


def close(a, b, tol=1e-6) -> bool:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return a.shape == b.shape and float(np.abs(a - b).max()) <= tol


@pytest.fixture(scope="module")
def url(nomic, builtin):
    from multimodal_embed.serving.app import ServeConfig, create_app

    with running(create_app(ServeConfig(api_key=KEY), embedders={"nomic": nomic, "builtin": builtin})) as base:
        yield base


@pytest.fixture(scope="module")
def long_url(builtin):
    """A server whose operator lets long texts through as the mean of their chunks (--long-text mean)."""
    from multimodal_embed.serving.app import ServeConfig, create_app

    with running(create_app(ServeConfig(long_text="mean"), embedders={"builtin": builtin})) as base:
        yield base


@pytest.fixture(scope="module")
def query_vec(nomic):
    return nomic.embed_text([QUERY], task="search_query")[0]


@pytest.fixture(scope="module")
def doc_vecs(nomic):
    return nomic.embed_text(DOCS, task="search_document")


def test_models_name_the_query_alias_and_the_usable_length(url, nomic):
    models = {m["id"]: m for m in httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {KEY}"})
              .json()["data"]}
    assert models["nomic:query"]["task"] == "search_query" and models["nomic:query"]["parent"] == "nomic"
    assert models["nomic"]["task"] == "search_document" and "builtin:query" not in models
    assert models["builtin"]["max_input_tokens"] == 256 and models["builtin"]["max_text_tokens"] == 254
    by_task = models["nomic"]["max_text_tokens_by_task"]
    for task, room in by_task.items():  # a text of exactly `room` tokens fills the context with its prefix
        assert room == nomic.max_text_length - nomic.count_tokens([""], task)[0]
    assert models["builtin"]["long_text"] == "refuse"


def test_openai_client(url, nomic, query_vec, doc_vecs):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY)
    docs = client.embeddings.create(model="nomic", input=DOCS)
    assert close([d.embedding for d in docs.data], doc_vecs)
    query = client.embeddings.create(model="nomic:query", input=QUERY)
    assert close(query.data[0].embedding, query_vec) and query.model == "nomic:query"
    clustering = client.embeddings.create(model="nomic:clustering", input=DOCS[:1])
    assert close(clustering.data[0].embedding, nomic.embed_text(DOCS[:1], task="clustering")[0])
    # a request's own task wins over the name's
    explicit = client.embeddings.create(model="nomic:query", input=DOCS[:1], extra_body={"task": "search_document"})
    assert close(explicit.data[0].embedding, doc_vecs[0])
    with pytest.raises(openai.NotFoundError, match="nomic:nonsense"):
        client.embeddings.create(model="nomic:nonsense", input="x")
    # vLLM's chat-style request: one embedding per request, text or one image
    photo = next(Path(__file__).resolve().parents[2].glob("multimodal_embed/demo_assets/*.jpg"))
    chat = client.embeddings.create(model="nomic", input=[], extra_body={"input": None, "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_uri(photo)}}]}]})
    assert len(chat.data) == 1 and close(chat.data[0].embedding, nomic.embed_images([str(photo)])[0])
    chat = client.embeddings.create(model="nomic:query", input=[], extra_body={"input": None, "messages": [
        {"role": "system", "content": "where is"}, {"role": "user", "content": [{"type": "text", "text": "the cat?"}]}]})
    assert close(chat.data[0].embedding, nomic.embed_text(["where is\nthe cat?"], task="search_query")[0])
    with pytest.raises(openai.BadRequestError, match="two requests"):
        client.embeddings.create(model="nomic", input=[], extra_body={"input": None, "messages": [
            {"role": "user", "content": [{"type": "text", "text": "a cat"},
                                         {"type": "image_url", "image_url": {"url": data_uri(photo)}}]}]})


def test_langchain_openai_embeddings(url, query_vec, doc_vecs, monkeypatch):
    pytest.importorskip("langchain_openai")
    from langchain_openai import OpenAIEmbeddings

    common = {"base_url": f"{url}/v1", "api_key": KEY, "check_embedding_ctx_length": False}
    docs = OpenAIEmbeddings(model="nomic", **common)
    queries = OpenAIEmbeddings(model="nomic:query", **common)
    assert close(docs.embed_documents(DOCS), doc_vecs)
    assert close(queries.embed_query(QUERY), query_vec)

    # LangChain's default (check_embedding_ctx_length=True) sends token ids: the 400 names the switch
    import llama_index.core

    cache = Path(llama_index.core.__file__).parent / "_static" / "tiktoken_cache"  # cl100k_base, offline
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    default = OpenAIEmbeddings(model="nomic", base_url=f"{url}/v1", api_key=KEY, max_retries=0)
    with pytest.raises(Exception, match="check_embedding_ctx_length=False"):
        default.embed_documents(DOCS[:1])


def test_llama_index_openai_like(url, query_vec, doc_vecs):
    pytest.importorskip("llama_index.embeddings.openai_like")
    from llama_index.embeddings.openai_like import OpenAILikeEmbedding

    docs = OpenAILikeEmbedding(model_name="nomic", api_base=f"{url}/v1", api_key=KEY)
    queries = OpenAILikeEmbedding(model_name="nomic:query", api_base=f"{url}/v1", api_key=KEY)
    assert close(docs.get_text_embedding_batch(DOCS), doc_vecs)
    assert close(queries.get_query_embedding(QUERY), query_vec)

    from llama_index.core import Document, VectorStoreIndex

    index = VectorStoreIndex.from_documents([Document(text=t) for t in DOCS], embed_model=docs)
    hits = index.as_retriever(similarity_top_k=3, embed_model=queries).retrieve(QUERY)
    assert close(sorted(h.score for h in hits), sorted(doc_vecs @ query_vec), 1e-5)


def test_chroma_openai_embedding_function(url, query_vec, doc_vecs, tmp_path, monkeypatch):
    chromadb = pytest.importorskip("chromadb")
    from chromadb.utils.embedding_functions import OpenAIEmbeddingFunction

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("CHROMA_OPENAI_API_KEY", KEY)
    docs = OpenAIEmbeddingFunction(model_name="nomic", api_base=f"{url}/v1")
    queries = OpenAIEmbeddingFunction(model_name="nomic:query", api_base=f"{url}/v1")
    col = chromadb.PersistentClient(path=str(tmp_path)).create_collection("docs", embedding_function=docs)
    col.add(ids=[f"d{i}" for i in range(len(DOCS))], documents=DOCS)
    assert close(queries([QUERY])[0], query_vec)
    res = col.query(query_embeddings=queries([QUERY]), n_results=3, include=["distances"])
    want = {f"d{i}": 1.0 - float(doc_vecs[i] @ query_vec) for i in range(len(DOCS))}
    assert close(res["distances"][0], [want[i] for i in res["ids"][0]], 1e-5)


def test_the_chroma_adapter_sends_dimensions_for_any_model_name(url, nomic, tmp_path, monkeypatch):
    """Chroma's OpenAIEmbeddingFunction sends `dimensions` only for OpenAI's model names; the adapter sends it for
    any served model, and its stored configuration names the key's variable, not the key."""
    chromadb = pytest.importorskip("chromadb")
    from multimodal_embed.integrations.chroma import MultimodalEmbeddingFunction

    monkeypatch.setenv("MMEMBED_API_KEY", KEY)
    ef = MultimodalEmbeddingFunction(base_url=f"{url}/v1", model="nomic", dimensions=32)
    col = chromadb.PersistentClient(path=str(tmp_path)).create_collection("docs", embedding_function=ef)
    col.add(ids=[f"d{i}" for i in range(len(DOCS))], documents=DOCS)
    got = col.get(ids=[f"d{i}" for i in range(len(DOCS))], include=["embeddings"])["embeddings"]
    assert close(got, nomic.embed_text(DOCS, task="search_document", dimensionality=32))
    assert ef.get_config()["dimensions"] == 32 and KEY not in str(ef.get_config())


def test_cohere_client(url, nomic, query_vec, doc_vecs):
    cohere = pytest.importorskip("cohere")
    client = cohere.ClientV2(api_key=KEY, base_url=url)
    res = client.embed(model="nomic", texts=[QUERY], input_type="search_query",
                       embedding_types=["float", "binary", "ubinary", "base64"])
    assert close(res.embeddings.float_[0], query_vec)
    packed = np.packbits(query_vec > 0)
    assert res.embeddings.ubinary[0] == packed.tolist()
    assert res.embeddings.binary[0] == (packed.astype(int) - 128).tolist()
    import base64

    assert close(np.frombuffer(base64.b64decode(res.embeddings.base64[0]), "<f4"), query_vec)
    res = client.embed(model="nomic", texts=DOCS, input_type="search_document", embedding_types=["float"])
    assert close(res.embeddings.float_, doc_vecs) and res.texts == DOCS
    for task in ("classification", "clustering"):
        res = client.embed(model="nomic", texts=DOCS[:1], input_type=task, embedding_types=["float"])
        assert close(res.embeddings.float_[0], nomic.embed_text(DOCS[:1], task=task)[0])
    res = client.embed(model="nomic", texts=DOCS, input_type="search_document", embedding_types=["float"],
                       output_dimension=32)
    assert close(res.embeddings.float_, nomic.embed_text(DOCS, task="search_document", dimensionality=32))
    photo = next(Path(__file__).resolve().parents[2].glob("multimodal_embed/demo_assets/*.jpg"))
    res = client.embed(model="nomic", images=[data_uri(photo)], input_type="image", embedding_types=["float"])
    assert close(res.embeddings.float_[0], nomic.embed_images([str(photo)])[0])
    assert res.images[0].format == "jpeg" and res.images[0].width > 0
    with pytest.raises(cohere.BadRequestError) as err:
        client.embed(model="nomic", texts=DOCS, input_type="search_query", embedding_types=["int8"])
    assert "int8" in err.value.body["message"] and "error" not in err.value.body  # Cohere's error shape
    with pytest.raises(cohere.UnauthorizedError) as err:
        cohere.ClientV2(api_key="wrong", base_url=url).embed(model="nomic", texts=DOCS, input_type="search_query")
    assert "API key" in err.value.body["message"]


def test_cohere_shapes_over_http(url, nomic):
    """What the client does not send: inputs (content lists), truncate NONE/MEAN, and each error's Cohere shape."""
    h = {"Authorization": f"Bearer {KEY}"}
    res = httpx.post(f"{url}/v2/embed", headers=h, json={
        "model": "nomic", "input_type": "search_query",
        "inputs": [{"content": [{"type": "text", "text": QUERY}]}]})
    assert res.status_code == 200 and close(res.json()["embeddings"]["float"][0],
                                            nomic.embed_text([QUERY], task="search_query")[0])
    for body, status, words in (
            ({"model": "nomic", "texts": DOCS}, 400, "input_type is required"),
            ({"model": "nomic", "texts": DOCS, "input_type": "query"}, 400, "not one of"),
            ({"model": "nomic", "texts": DOCS, "images": ["data:,"], "input_type": "search_query"}, 400,
             "exactly one"),
            ({"model": "nomic", "images": ["/etc/passwd"], "input_type": "image"}, 400, "data URI"),
            ({"model": "nomic", "texts": DOCS, "input_type": "search_query", "output_dimension": 7}, 400, "7"),
            ({"model": "other", "texts": DOCS, "input_type": "search_query"}, 404, "other"),
            ({"model": "nomic", "texts": "one", "input_type": "search_query"}, 400, "texts")):
        res = httpx.post(f"{url}/v2/embed", headers=h, json=body)
        assert res.status_code == status, (body, res.text)
        assert set(res.json()) == {"id", "message"} and words in res.json()["message"], res.text


def test_long_texts_refused_truncated_or_averaged_as_the_library_does(url, long_url, builtin):
    openai = pytest.importorskip("openai")
    long_text = " ".join(["the quick brown fox jumps over the lazy dog"] * 60)  # ~540 tokens, over 256
    refused = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY)
    with pytest.raises(openai.BadRequestError, match="long_text"):
        refused.embeddings.create(model="builtin", input=[long_text])
    cut = refused.embeddings.create(model="builtin", input=[long_text], extra_body={"long_text": "truncate"})
    assert close(cut.data[0].embedding, builtin.embed_text([long_text], long_text="truncate")[0])
    mean = refused.embeddings.create(model="builtin", input=[long_text], extra_body={"long_text": "mean"})
    assert close(mean.data[0].embedding, builtin.embed_text([long_text], long_text="mean")[0])
    assert mean.usage.prompt_tokens == builtin.count_tokens([long_text])[0] > 256

    allowed = openai.OpenAI(base_url=f"{long_url}/v1", api_key="unused")
    got = allowed.embeddings.create(model="builtin", input=[long_text])
    assert close(got.data[0].embedding, builtin.embed_text([long_text], long_text="mean")[0])
    with pytest.raises(openai.BadRequestError, match="more than the model's 256"):  # a request may still refuse
        allowed.embeddings.create(model="builtin", input=[long_text], extra_body={"long_text": "refuse"})


def test_llama_index_default_chunks_through_a_256_token_model(long_url, builtin):
    """LlamaIndex's default splitter makes 1024-token chunks; a 1,000-token document is one chunk, over the built-in
    model's 256: with --long-text mean it is embedded whole, as the library's long_text="mean"."""
    pytest.importorskip("llama_index.embeddings.openai_like")
    from llama_index.core import Document, Settings, VectorStoreIndex
    from llama_index.core.node_parser import SentenceSplitter
    from llama_index.embeddings.openai_like import OpenAILikeEmbedding

    sentence = "A harbour town wakes slowly while fishing boats return with the morning catch. "
    text = sentence * 70  # about 1,000 tokens for LlamaIndex's tokenizer
    emb = OpenAILikeEmbedding(model_name="builtin", api_base=f"{long_url}/v1", api_key="unused")
    nodes = SentenceSplitter().get_nodes_from_documents([Document(text=text)])  # the default: 1024-token chunks
    assert len(nodes) == 1 and 900 <= len(Settings.tokenizer(nodes[0].get_content())) <= 1024
    index = VectorStoreIndex(nodes, embed_model=emb)
    stored = index.vector_store.data.embedding_dict[nodes[0].node_id]
    content = nodes[0].get_content(metadata_mode="embed")
    assert builtin.count_tokens([content])[0] > 256
    assert close(stored, builtin.embed_text([content], long_text="mean")[0])


def test_the_long_text_option_of_mmembed_serve():
    from multimodal_embed.cli import build_parser
    from multimodal_embed.serving.cli import config_from_args

    config = config_from_args(build_parser().parse_args(["serve", "--long-text", "mean"]))
    assert config.long_text == "mean"
    assert config_from_args(build_parser().parse_args(["serve"])).long_text is None
