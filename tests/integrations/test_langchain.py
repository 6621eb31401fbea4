"""LangChain: MultimodalEmbeddings in langchain-core's InMemoryVectorStore, texts and images."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from multimodal_embed.errors import ImageDecodeError, InvalidInputError

from .conftest import TEXTS, close

pytest.importorskip("langchain_core")

from langchain_core.vectorstores import InMemoryVectorStore

from multimodal_embed.integrations.langchain import MultimodalEmbeddings, add_images


def _stored(store, ids):
    return np.array([store.store[i]["vector"] for i in ids])


def test_texts_and_images_in_one_store_with_their_prefixes_in_one_model_call_each(nomic_pair, calls, photos):
    emb = MultimodalEmbeddings(embedder=nomic_pair)
    store = InMemoryVectorStore(emb)
    text_ids = store.add_texts(TEXTS)
    assert len(calls.text) == 1 and calls.image == []  # the whole list in one forward pass
    docs = nomic_pair.embed_text(TEXTS, task="search_document")
    assert close(_stored(store, text_ids), docs)
    assert not close(docs, nomic_pair.embed_text(TEXTS, task="search_query"), 1e-3)  # the prefix changes vectors

    calls.reset()
    image_ids = add_images(store, photos, metadatas=[{"n": i} for i in range(len(photos))])
    assert calls.image == [len(photos)] and calls.text == []
    assert close(_stored(store, image_ids), nomic_pair.embed_images(photos))
    assert store.get_by_ids([image_ids[2]])[0].metadata == {"n": 2, "image": photos[2]}

    # a text query is embedded with the query prefix: the scores are cosines against that vector
    q = "a cat on a sofa"
    qv = nomic_pair.embed_text([q], task="search_query")[0]
    assert close(emb.embed_query(q), qv)
    hits = store.similarity_search_with_score(q, k=len(TEXTS) + len(photos))
    everything = np.concatenate([_stored(store, text_ids), _stored(store, image_ids)])
    assert close(sorted(s for _, s in hits), sorted(everything @ qv), 1e-5)

    # an image query finds that image first
    best, score = store.similarity_search_with_score_by_vector(emb.embed_image([photos[3]])[0], k=1)[0]
    assert best.metadata["image"] == photos[3] and score == pytest.approx(1.0, abs=1e-5)


def test_async_variants_run_off_the_event_loop(nomic_pair, calls):
    emb = MultimodalEmbeddings(embedder=nomic_pair)

    async def run():
        return await emb.aembed_documents(TEXTS), await emb.aembed_query("a cat"), threading.get_ident()

    docs, query, loop_thread = asyncio.run(run())
    assert calls.threads and loop_thread not in calls.threads
    assert close(docs, nomic_pair.embed_text(TEXTS, task="search_document"))
    assert close(query, nomic_pair.embed_text(["a cat"], task="search_query")[0])


def test_a_bad_image_is_named_and_the_good_ones_are_stored(nomic_pair, photos, not_an_image):
    store = InMemoryVectorStore(MultimodalEmbeddings(embedder=nomic_pair))
    with pytest.raises(ImageDecodeError) as err:
        add_images(store, [photos[0], not_an_image, photos[1]], ids=["a", "bad", "b"])
    assert "notes.jpg" in str(err.value) and "'bad'" in str(err.value) and "#1" in str(err.value)
    assert sorted(store.store) == ["a", "b"]
    assert close(_stored(store, ["a", "b"]), nomic_pair.embed_images(photos[:2]))
    with pytest.raises(ImageDecodeError, match="notes.jpg"):
        MultimodalEmbeddings(embedder=nomic_pair).embed_image([photos[0], not_an_image])


def test_built_from_a_folder_with_embedder_options(fixtures_dir, nomic_pair, photos):
    emb = MultimodalEmbeddings(model=str(fixtures_dir / "text-v1.5-tiny"), vision=str(fixtures_dir /
                               "vision-v1.5-tiny"), device="cpu", query_task=None)
    assert emb.backend.embedder.info["device"] == "cpu"
    assert close(emb.embed_query("a cat"), nomic_pair.embed_text(["a cat"], task=None)[0])  # no prefix asked
    with pytest.raises(InvalidInputError):
        MultimodalEmbeddings(embedder=nomic_pair, device="cpu")
    with pytest.raises(InvalidInputError):
        MultimodalEmbeddings()
    with pytest.raises(InvalidInputError, match="dimensionality must be between 64 and 64"):  # trained at 64 only
        MultimodalEmbeddings(embedder=nomic_pair, dimensions=32)
    assert len(MultimodalEmbeddings(embedder=nomic_pair, dimensions=64).embed_image([photos[0]])[0]) == 64
