"""Chroma: MultimodalEmbeddingFunction with a persistent client in a temporary folder."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from multimodal_embed.errors import ImageDecodeError, InputTypeError, InvalidInputError

from .conftest import TEXTS, close

chromadb = pytest.importorskip("chromadb")

from multimodal_embed.integrations.chroma import MultimodalEmbeddingFunction


def _arrays(paths):
    out = []
    for p in paths:
        with Image.open(p) as im:
            out.append(np.asarray(im.convert("RGB")))
    return out


def _vectors(col, ids):
    got = col.get(ids=ids, include=["embeddings"])
    order = {i: k for k, i in enumerate(got["ids"])}
    return np.asarray(got["embeddings"])[[order[i] for i in ids]]


def test_documents_and_images_stored_and_queried_with_their_prefixes(nomic_pair, calls, photos, tmp_path):
    ef = MultimodalEmbeddingFunction(embedder=nomic_pair)
    col = chromadb.PersistentClient(path=str(tmp_path)).create_collection("mixed", embedding_function=ef)
    text_ids = [f"t{i}" for i in range(len(TEXTS))]
    col.add(ids=text_ids, documents=TEXTS)
    assert len(calls.text) == 1 and calls.image == []
    assert close(_vectors(col, text_ids), nomic_pair.embed_text(TEXTS, task="search_document"))

    calls.reset()
    arrays = _arrays(photos)
    image_ids = [f"i{i}" for i in range(len(photos))]
    col.add(ids=image_ids, images=arrays)
    assert calls.image == [len(photos)] and calls.text == []
    assert close(_vectors(col, image_ids), nomic_pair.embed_images(arrays))

    # query_texts go through embed_query: cosine distances to the query-prefixed vector
    q = "a cat on a sofa"
    res = col.query(query_texts=[q], n_results=len(text_ids) + len(image_ids), include=["distances"])
    qv = nomic_pair.embed_text([q], task="search_query")[0]
    stored = _vectors(col, res["ids"][0])
    assert close(res["distances"][0], 1.0 - stored @ qv, 1e-5)
    assert not close(qv, nomic_pair.embed_text([q], task="search_document")[0], 1e-3)

    res = col.query(query_images=[arrays[2]], n_results=1)
    assert res["ids"][0] == [image_ids[2]]


def test_the_configuration_round_trip_reopens_the_collection(fixtures_dir, nomic_pair, photos, tmp_path):
    text, vision = str(fixtures_dir / "text-v1.5-tiny"), str(fixtures_dir / "vision-v1.5-tiny")
    ef = MultimodalEmbeddingFunction(model=text, vision=vision, device="cpu", precision="exact", dimensions=64)
    config = ef.get_config()
    assert config["model"] == text and config["vision"] == vision and config["device"] == "cpu"
    assert config["precision"] == "exact" and ef._adapter.backend.embedder.info["precision"]["requested"] == "exact"
    with pytest.raises(InvalidInputError, match="bogus"):  # the options reach Embedder.from_pretrained
        MultimodalEmbeddingFunction(model=text, vision=vision, precision="bogus")
    assert MultimodalEmbeddingFunction.build_from_config(config).get_config() == config
    assert MultimodalEmbeddingFunction(embedder=nomic_pair).get_config()["vision"] == vision  # a pair by name
    assert not ef.is_legacy()

    col = chromadb.PersistentClient(path=str(tmp_path)).create_collection("docs", embedding_function=ef)
    col.add(ids=["a", "b"], documents=TEXTS[:2])
    del col
    again = chromadb.PersistentClient(path=str(tmp_path)).get_collection("docs")  # no function given
    rebuilt = again.configuration["embedding_function"]
    assert isinstance(rebuilt, MultimodalEmbeddingFunction) and rebuilt.get_config() == config
    res = again.query(query_texts=[TEXTS[1]], n_results=2, include=["distances"])
    qv = nomic_pair.embed_text([TEXTS[1]], task="search_query")[0]
    assert close(res["distances"][0], 1.0 - _vectors(again, res["ids"][0]) @ qv, 1e-5)
    with pytest.raises(InvalidInputError, match="model"):
        ef.validate_config_update(config, {"model": "another"})
    with pytest.raises(InvalidInputError):
        MultimodalEmbeddingFunction.validate_config({"device": "cpu"})


def test_a_bad_image_is_named_and_the_good_ones_are_stored(nomic_pair, photos, not_an_image, tmp_path):
    ef = MultimodalEmbeddingFunction(embedder=nomic_pair)
    col = chromadb.PersistentClient(path=str(tmp_path)).create_collection("photos", embedding_function=ef)
    with pytest.raises(ImageDecodeError) as err:
        ef.add_images(col, ["a", "bad", "b"], [photos[0], not_an_image, photos[1]])
    assert "notes.jpg" in str(err.value) and "'bad'" in str(err.value)
    assert sorted(col.get()["ids"]) == ["a", "b"]
    assert close(_vectors(col, ["a", "b"]), nomic_pair.embed_images(photos[:2]))
    assert col.get(ids=["a"], include=["uris"])["uris"] == [photos[0]]

    with pytest.raises(ImageDecodeError, match="#1"):  # an array that is not an image: the whole add is refused
        col.add(ids=["c", "d"], images=[_arrays(photos[2:3])[0], np.zeros((4, 4, 7), np.uint8)])
    with pytest.raises(InputTypeError, match="#0"):
        ef([3.5])
    assert sorted(col.get()["ids"]) == ["a", "b"]


def test_arrays_of_any_numeric_dtype_are_pixels_as_pillow_reads_them(nomic_pair, photos):
    """Chroma's Image type allows unsigned, int64 and float64 arrays: each is the uint8 image Pillow makes of it."""
    from multimodal_embed.integrations.chroma import pixels

    ef = MultimodalEmbeddingFunction(embedder=nomic_pair)
    base = _arrays(photos[:1])[0]
    want = nomic_pair.embed_images([base])
    for dtype in (np.int64, np.uint64, np.int32, np.uint16, np.float64, np.float32):
        assert close(ef([base.astype(dtype)]), want), dtype
    assert close(ef([base.astype(np.float64) + 0.75]), want)  # fractions dropped, as Pillow's 8-bit conversion
    wide = np.array([[-3, 0, 17, 255, 256, 70000]], dtype=np.int64)
    from PIL import Image as PILImage

    assert pixels(wide).tolist() == np.asarray(PILImage.fromarray(wide.astype(np.int32)).convert("L")).tolist()
    grey = np.array([[0.4, 1.5, 254.9, 300.0, -2.0]])
    assert pixels(grey).tolist() == np.asarray(PILImage.fromarray(grey.astype(np.float32)).convert("L")).tolist()
    assert pixels(np.array([[True, False]])).tolist() == [[255, 0]]
    bad = base.astype(np.float64)
    bad[0, 0, 0] = np.nan
    with pytest.raises(ImageDecodeError, match=r"#1 .*NaN"):
        ef([base, bad])


def test_chromas_shipped_multimodal_test_passes(nomic_pair):
    """chromadb's own test_multimodal, imported and run as shipped, with this function as its embedding function
    (needs chromadb's test dependencies: hypothesis and opentelemetry-instrumentation-fastapi)."""
    pytest.importorskip("hypothesis")
    pytest.importorskip("opentelemetry.instrumentation.fastapi")
    from chromadb.test.ef.test_multimodal_ef import test_multimodal

    ef = MultimodalEmbeddingFunction(embedder=nomic_pair, query_task="search_document")
    client = chromadb.EphemeralClient()
    col = client.create_collection("multimodal_collection", embedding_function=ef)
    try:
        test_multimodal(col, default_ef=ef)
    finally:
        client.delete_collection("multimodal_collection")
