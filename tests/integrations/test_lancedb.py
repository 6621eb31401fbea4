"""LanceDB: the "multimodal-embed" registry function on an embedded table (vectors fill themselves on add, the
query is embedded on search)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .conftest import TEXTS, close

lancedb = pytest.importorskip("lancedb")

from lancedb.embeddings import get_registry
from lancedb.pydantic import LanceModel, Vector

import multimodal_embed.integrations.lancedb  # noqa: F401  (registers "multimodal-embed")


def _table(db, name, func, column="text"):
    fields = {column: (str, func.SourceField()), "vector": (Vector(func.ndims()), func.VectorField())}
    from pydantic import create_model

    return db.create_table(name, schema=create_model(name.title(), __base__=LanceModel, **fields))


def _rows(tbl, key):
    rows = tbl.to_arrow().to_pylist()
    return {r[key]: np.asarray(r["vector"]) for r in rows}


def test_text_and_image_tables_fill_themselves_and_search_by_text_and_image(nomic_pair, calls, photos, tmp_path):
    registry = get_registry()
    db = lancedb.connect(tmp_path)
    texts = _table(db, "texts", registry.get("multimodal-embed").create(embedder=nomic_pair))
    calls.reset()
    texts.add([{"text": t} for t in TEXTS])
    assert len(calls.text) == 1 and calls.image == []
    stored = _rows(texts, "text")
    assert close([stored[t] for t in TEXTS], nomic_pair.embed_text(TEXTS, task="search_document"))

    q = "a cat on a sofa"
    qv = nomic_pair.embed_text([q], task="search_query")[0]
    hits = texts.search(q).metric("cosine").limit(len(TEXTS)).to_list()
    assert close([h["_distance"] for h in hits], [1.0 - stored[h["text"]] @ qv for h in hits], 1e-5)

    images = _table(db, "photos", registry.get("multimodal-embed").create(embedder=nomic_pair, source="image"),
                    column="path")
    calls.reset()
    images.add([{"path": p} for p in photos])
    assert calls.image == [len(photos)] and calls.text == []
    stored = _rows(images, "path")
    assert close([stored[p] for p in photos], nomic_pair.embed_images(photos))

    hits = images.search(q).metric("cosine").limit(len(photos)).to_list()  # a text query against images
    assert close([h["_distance"] for h in hits], [1.0 - stored[h["path"]] @ qv for h in hits], 1e-5)
    assert images.search(Path(photos[3])).limit(1).to_list()[0]["path"] == photos[3]
    with Image.open(photos[1]) as im:
        assert images.search(im.convert("RGB")).limit(1).to_list()[0]["path"] == photos[1]

    # reopened, the table rebuilds its function from its metadata and keeps using the Embedder it was given
    again = lancedb.connect(tmp_path).open_table("photos")
    calls.reset()
    again.add([{"path": photos[0]}])
    assert calls.image == [1] and again.count_rows() == len(photos) + 1


def test_a_model_name_with_options_round_trips_through_the_table(fixtures_dir, nomic_pair, tmp_path):
    func = get_registry().get("multimodal-embed").create(
        model=str(fixtures_dir / "text-v1.5-tiny"), options={"device": "cpu"}, query_task=None)
    tbl = _table(lancedb.connect(tmp_path), "docs", func)
    tbl.add([{"text": t} for t in TEXTS[:2]])
    config = lancedb.connect(tmp_path).open_table("docs").embedding_functions["vector"].function
    assert config.model == func.model and config.options == {"device": "cpu"} and config.query_task is None
    got = tbl.search(TEXTS[0]).limit(1).to_list()[0]
    assert got["text"] == TEXTS[0]
    assert close(config.compute_query_embeddings(TEXTS[0])[0], nomic_pair.embed_text([TEXTS[0]], task=None)[0])


def test_a_bad_image_is_named_and_skip_keeps_the_good_rows(nomic_pair, photos, not_an_image, tmp_path, caplog):
    db = lancedb.connect(tmp_path)
    strict = _table(db, "strict", get_registry().get("multimodal-embed").create(embedder=nomic_pair,
                                                                               source="image"), column="path")
    with pytest.raises(Exception, match=r"cannot use image #1 '.*notes\.jpg'"):
        strict.add([{"path": photos[0]}, {"path": not_an_image}])
    assert strict.count_rows() == 0

    lenient = _table(db, "lenient", get_registry().get("multimodal-embed").create(
        embedder=nomic_pair, source="image", on_error="skip"), column="path")
    with caplog.at_level(logging.WARNING, logger="multimodal_embed.integrations.lancedb"):
        lenient.add([{"path": photos[0]}, {"path": not_an_image}, {"path": photos[1]}], on_bad_vectors="drop")
    assert "notes.jpg" in caplog.text
    stored = _rows(lenient, "path")
    assert sorted(stored) == sorted(photos[:2])
    assert close([stored[p] for p in photos[:2]], nomic_pair.embed_images(photos[:2]))


def test_auto_source_reads_a_column_of_image_paths_as_images_name_and_file_urls(nomic_pair, photos, tmp_path):
    """As LanceDB's open-clip function: a string column of image paths (or file: URLs) holds images."""
    func = get_registry().get("multimodal-embed").create(embedder=nomic_pair)  # source="auto"
    db = lancedb.connect(tmp_path)
    tbl = _table(db, "auto", func, column="path")
    urls = [Path(p).resolve().as_uri() for p in photos[2:4]]
    tbl.add([{"path": p} for p in photos[:2]] + [{"path": u} for u in urls])
    stored = _rows(tbl, "path")
    assert close([stored[p] for p in photos[:2] + urls], nomic_pair.embed_images(photos[:4]))
    texts = _table(db, "texts", func)  # the same function on a column of sentences: texts, document prefix
    texts.add([{"text": t} for t in TEXTS[:2]] + [{"text": "see photo.jpg"}])
    stored = _rows(texts, "text")
    assert close([stored[t] for t in TEXTS[:2]], nomic_pair.embed_text(TEXTS[:2], task="search_document"))


def test_name_is_taken_for_the_model(fixtures_dir, nomic_pair, tmp_path):
    folder = str(fixtures_dir / "text-v1.5-tiny")
    func = get_registry().get("multimodal-embed").create(name=folder, options={"device": "cpu"})
    assert func.model == folder and func.endpoints() == []
    assert close(func.compute_query_embeddings("a cat")[0], nomic_pair.embed_text(["a cat"], task="search_query")[0])
    from multimodal_embed.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="name="):
        get_registry().get("multimodal-embed").create(name=folder, model="another")
