"""What a map reads: vectors files (as ImageIndex.export and mmembed embed write them) and text collections."""

from __future__ import annotations

import json

import numpy as np
import pytest

from multimodal_embed.errors import InvalidInputError
from multimodal_embed.index.shards import write_vectors
from multimodal_embed.map.sources import MapSource, from_vectors, load_source, read_texts, source_kind
from tests.conftest import FIXTURES


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".npy"])
def test_vectors_files_round_trip(tmp_path, suffix):
    rng = np.random.default_rng(0)
    mat = rng.normal(size=(4, 6)).astype(np.float32)
    mat /= np.linalg.norm(mat, axis=1, keepdims=True)
    rows = [{"path": f"/photos/{i}.jpg", "size": i} for i in range(4)]
    out = write_vectors(rows, mat, tmp_path / f"v{suffix}", identity={"name": "m", "dim": 6})
    assert source_kind(out) == "vectors"
    src = from_vectors(out)
    assert src.kind == "image" and src.items == [r["path"] for r in rows]
    np.testing.assert_allclose(src.vectors, mat, atol=1e-6)
    if suffix == ".parquet":
        assert src.identity == {"name": "m", "dim": 6}


def test_text_rows_make_a_text_map_and_mixed_kinds_are_refused(tmp_path):
    mat = np.eye(3, dtype=np.float32)
    out = write_vectors([{"kind": "text", "text": t} for t in "abc"], mat, tmp_path / "t.jsonl")
    src = load_source(out)
    assert src.kind == "text" and src.items == ["a", "b", "c"]
    mixed = write_vectors([{"kind": "text", "text": "a"}, {"kind": "image", "path": "/x.jpg"}], mat[:2],
                          tmp_path / "m.jsonl")
    with pytest.raises(InvalidInputError, match="mixes texts and images"):
        from_vectors(mixed)


def test_damaged_vectors_files_name_the_problem(tmp_path):
    np.save(tmp_path / "a.npy", np.eye(2, dtype=np.float32))
    with pytest.raises(InvalidInputError, match="meta.jsonl"):
        from_vectors(tmp_path / "a.npy")
    (tmp_path / "b.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(InvalidInputError, match="not a readable Parquet"):
        from_vectors(tmp_path / "b.parquet")
    (tmp_path / "c.jsonl").write_text(json.dumps({"path": "x", "vector": [float("nan"), 1]}) + "\n")
    with pytest.raises(InvalidInputError, match="not finite"):
        from_vectors(tmp_path / "c.jsonl")
    with pytest.raises(InvalidInputError, match="no such file"):
        source_kind(tmp_path / "missing")
    with pytest.raises(InvalidInputError, match="vectors of shape"):
        MapSource("image", ["a"], np.zeros((2, 3)))


def test_text_collections_beir_jsonl_and_txt(tmp_path):
    ids, texts = read_texts(FIXTURES / "retrieval")  # a BEIR folder: corpus.jsonl
    with open(FIXTURES / "retrieval" / "corpus.jsonl", encoding="utf-8") as fh:
        first = json.loads(fh.readline())
    assert ids[0] == str(first["_id"]) and first["text"] in texts[0] and len(ids) == len(texts) > 100
    (tmp_path / "t.jsonl").write_text('{"id": 7, "text": "hello"}\n\n{"text": "  "}\n{"contents": "world"}\n')
    assert read_texts(tmp_path / "t.jsonl") == (["7", "4"], ["hello", "world"])
    (tmp_path / "t.txt").write_text("one\n\ntwo\n")
    assert read_texts(tmp_path / "t.txt") == (["1", "3"], ["one", "two"])
    assert source_kind(tmp_path / "t.jsonl") == "texts" and source_kind(tmp_path) == "texts"
    with pytest.raises(InvalidInputError, match="needs a model"):
        load_source(tmp_path / "t.txt")
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(InvalidInputError, match="has no texts"):
        read_texts(tmp_path / "empty.txt")
