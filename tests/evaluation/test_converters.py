"""benchmarks/eval_data.py on small inputs in the collections' own formats (the real ones live outside the clone)."""

from __future__ import annotations

import json

from benchmarks import eval_data
from multimodal_embed.evaluation import datasets as D

CRAN_DOCS = """.I 1
.T
wing flutter .
.A
someone
.B
j. 1958
.W
wing flutter .
  flutter of wings at speed .
.I 2
.T
heat transfer
.W
heat transfer in slabs .
.I 3
.W
boundary layers .
"""
CRAN_QUERIES = """.I 001
.W
what causes flutter .
.I 004
.W
heat conduction in slabs .
"""
CRAN_QRELS = "1 1 1\n1 3 4\n1 2 -1\n2 2 2\n2 2 2\n"


def test_cranfield_to_beir(tmp_path):
    src = tmp_path / "shared" / "data" / "ir" / "cranfield"
    src.mkdir(parents=True)
    (src / "cran.all.1400").write_text(CRAN_DOCS)
    (src / "cran.qry").write_text(CRAN_QUERIES)
    (src / "cranqrel").write_text(CRAN_QRELS)
    out = eval_data.cranfield(tmp_path / "shared", tmp_path / "beir")
    data = D.load_dataset(out)
    assert data.task == "text-retrieval" and data.doc_ids == ["1", "2", "3"]
    assert data.docs[0] == "wing flutter . flutter of wings at speed ."  # the .W field only
    assert data.query_ids == ["1", "2"]  # file order, not the .I numbers
    # codes 1 (complete answer) .. 4 -> grades 4 .. 1; -1 -> judged, not relevant; the repeated line once
    assert data.qrels == [{"1": 4, "3": 1, "2": 0}, {"2": 3}]


def test_stamps_to_captions_held_out(data_dir, tmp_path):
    out = eval_data.stamps(data_dir / "tuxpaint-stamps", tmp_path / "all.jsonl", held_out=False)
    held = eval_data.stamps(data_dir / "tuxpaint-stamps", tmp_path / "held.jsonl", held_out=True)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    kept = [json.loads(line) for line in held.read_text().splitlines()]
    assert len(rows) == 148 and 0 < len(kept) < len(rows) and all(r in rows for r in kept)
    data = D.load_dataset(held)
    assert data.task == "image-text" and len(data.captions) == len(kept)
