"""LlamaIndex: MultimodalEmbedding in a MultiModalVectorStoreIndex (text and image nodes, in-memory stores)."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from multimodal_embed.errors import ImageDecodeError

from .conftest import TEXTS, close

pytest.importorskip("llama_index.core")

from llama_index.core.indices import MultiModalVectorStoreIndex
from llama_index.core.schema import ImageNode, TextNode

from multimodal_embed.integrations.llama_index import MultimodalEmbedding


def _index(emb, texts, photos):
    nodes = [TextNode(text=t, id_=f"t{i}") for i, t in enumerate(texts)]
    nodes += [ImageNode(image_path=p, id_=f"i{i}", metadata={"file_path": p}) for i, p in enumerate(photos)]
    return MultiModalVectorStoreIndex(nodes, embed_model=emb, image_embed_model=emb)


def _stored(index, ids, images=False):
    store = index.image_vector_store if images else index.vector_store
    return np.array([store.data.embedding_dict[i] for i in ids])


def test_text_and_image_nodes_indexed_and_retrieved_with_their_prefixes(nomic_pair, calls, photos):
    emb = MultimodalEmbedding(embedder=nomic_pair)
    index = _index(emb, TEXTS, photos)
    assert len(calls.text) == 1 and calls.image == [len(photos)]  # one model call per side
    assert close(_stored(index, [f"t{i}" for i in range(len(TEXTS))]),
                 nomic_pair.embed_text(TEXTS, task="search_document"))
    assert close(_stored(index, [f"i{i}" for i in range(len(photos))], images=True), nomic_pair.embed_images(photos))

    q = "a cat on a sofa"
    qv = nomic_pair.embed_text([q], task="search_query")[0]
    retriever = index.as_retriever(similarity_top_k=len(TEXTS), image_similarity_top_k=len(photos))
    hits = retriever.text_retrieve(q)
    assert close([h.score for h in hits], [_stored(index, [h.node.node_id])[0] @ qv for h in hits], 1e-5)
    hits = retriever.text_to_image_retrieve(q)
    assert close([h.score for h in hits], [_stored(index, [h.node.node_id], True)[0] @ qv for h in hits], 1e-5)
    assert retriever.image_to_image_retrieve(photos[2])[0].node.node_id == "i2"


def test_batches_follow_embed_batch_size_and_async_runs_off_the_loop(nomic_pair, calls, photos):
    emb = MultimodalEmbedding(embedder=nomic_pair, embed_batch_size=2)
    vectors = emb.get_image_embedding_batch(photos)
    assert calls.image == [2, 2, 1]  # each LlamaIndex batch is one model call, never one per image
    assert close(vectors, nomic_pair.embed_images(photos))

    calls.reset()

    async def run():
        return await emb.aget_text_embedding_batch(TEXTS), await emb.aget_query_embedding("a cat"), \
            threading.get_ident()

    docs, query, loop_thread = asyncio.run(run())
    assert calls.threads and loop_thread not in calls.threads
    assert close(docs, nomic_pair.embed_text(TEXTS, task="search_document"))
    assert close(query, nomic_pair.embed_text(["a cat"], task="search_query")[0])


def test_a_bad_image_is_named(nomic_pair, photos, not_an_image):
    emb = MultimodalEmbedding(embedder=nomic_pair)
    with pytest.raises(ImageDecodeError, match=r"#1 '.*notes\.jpg'"):
        emb.get_image_embedding_batch([photos[0], not_an_image])
    with pytest.raises(ImageDecodeError, match="notes.jpg"):
        _index(emb, TEXTS[:1], [photos[0], not_an_image])


def test_to_dict_from_dict_round_trip(fixtures_dir, nomic_pair):
    text = str(fixtures_dir / "text-v1.5-tiny")
    for emb in (MultimodalEmbedding(embedder=nomic_pair, embed_batch_size=3),
                MultimodalEmbedding(model=text, device="cpu", query_task=None, dimensions=64)):
        data = emb.to_dict()
        again = MultimodalEmbedding.from_dict(data)
        assert again.to_dict() == data and again.embed_batch_size == emb.embed_batch_size
        assert close(again.get_query_embedding("a cat"), emb.get_query_embedding("a cat"))
        assert close(again.get_text_embedding("a cat"), emb.get_text_embedding("a cat"))
    assert data["options"] == {"device": "cpu"} and data["query_task"] is None
    again = MultimodalEmbedding.from_dict(MultimodalEmbedding(embedder=nomic_pair).to_dict())
    assert close(again.get_query_embedding("a cat"), nomic_pair.embed_text(["a cat"], task="search_query")[0])
