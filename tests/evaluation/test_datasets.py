"""Data sets recognised by their layout and read the same from every format."""

from __future__ import annotations

import csv
import json

import pytest

from multimodal_embed.errors import InvalidInputError
from multimodal_embed.evaluation import datasets as D

from .conftest import CLASSES, stamp_pairs


def test_layouts_are_recognised(photos, captions, beir, tmp_path, data_dir):
    assert D.detect_task(photos) == "zeroshot"
    assert D.detect_task(captions) == "image-text"
    assert D.detect_task(beir) == "text-retrieval"
    assert D.detect_task(data_dir / "tuxpaint-stamps") == "image-text"  # .txt caption sidecars
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "a.jpg").write_bytes((photos / "cat" / "0000.jpg").read_bytes())
    with pytest.raises(InvalidInputError, match="flat: not a BEIR folder"):
        D.detect_task(flat)
    with pytest.raises(InvalidInputError, match="unknown data format"):
        D.detect_task(photos / "cat" / "0000.jpg")


def test_image_folder_and_labelled_table_agree(photos, tmp_path):
    folder = D.load_dataset(photos, limit_per_class=2)
    assert folder.classes == sorted(CLASSES) and len(folder.images.files) == 12
    table = tmp_path / "labels.csv"
    with open(table, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label"])
        for c in sorted(CLASSES):
            for f in sorted((photos / c).iterdir()):
                w.writerow([f.relative_to(tmp_path), c])
    listed = D.load_dataset(table, limit_per_class=2)
    assert listed.task == "zeroshot" and listed.classes == folder.classes and listed.labels == folder.labels
    assert listed.images.files == folder.images.files and listed.images.hashes == folder.images.hashes


def test_coco_json_and_jsonl_captions_agree(captions, tmp_path):
    rows = [json.loads(line) for line in captions.read_text().splitlines()]
    ids = {f: i for i, f in enumerate(dict.fromkeys(r["image"] for r in rows))}
    coco = tmp_path / "coco.json"
    coco.write_text(json.dumps({"images": [{"id": i, "file_name": f} for f, i in ids.items()],
                                "annotations": [{"image_id": ids[r["image"]], "caption": r["caption"]}
                                                for r in rows]}))
    a, b = D.load_dataset(captions), D.load_dataset(coco)
    assert (a.images.files, a.captions, a.caption_image) == (b.images.files, b.captions, b.caption_image)
    assert a.caption_image.count(0) == 2 and len(a.images.files) == len(stamp_pairs())
    assert a.sha256 == b.sha256  # same images and captions, same data set
    coco.write_text(json.dumps({"images": [], "annotations": [{"image_id": 7, "caption": "x"}]}))
    with pytest.raises(InvalidInputError, match="image ids not in images"):
        D.load_dataset(coco)


def test_beir_reading_and_hash(beir):
    data = D.load_dataset(beir)
    assert (len(data.docs), len(data.queries)) == (952, 864) and data.docs[0] == "A frog."
    assert data.qrels[0] == {"d0": 1, "d1": 1}
    before = data.sha256
    with open(beir / "qrels" / "test.tsv", "a") as fh:
        fh.write("q0\td2\t0\n")
    assert D.load_dataset(beir).sha256 != before  # the hash follows the contents
    with pytest.raises(InvalidInputError, match="no qrels/dev.tsv"):
        D.load_dataset(beir, split="dev")
