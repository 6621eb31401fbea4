"""``mmembed eval`` on hostile inputs and outputs (issue 36, items 6, 9, 15): data files that name FIFOs or devices,
outputs that are links or devices, errors that name the file and line, outputs checked before any work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from multimodal_embed.cli import main
from multimodal_embed.errors import InvalidInputError
from multimodal_embed.evaluation import datasets as D
from multimodal_embed.imagefiles import check_output_path, sha256_file, write_atomic


def _fifo(path):
    os.mkfifo(path)
    return path


# -- item 6: a data file naming /dev/zero or a FIFO never hangs ---------------------------------------------------
def test_data_files_naming_fifos_and_devices_are_failures_not_hangs(photos, tmp_path):
    """A labels CSV and a COCO JSON naming /dev/zero, a FIFO and a link to a FIFO: loaded at once (in a subprocess
    with a deadline), those items recorded as unreadable, the others hashed."""
    fifo = _fifo(tmp_path / "pipe.jpg")
    (tmp_path / "link.jpg").symlink_to(fifo)
    good = sorted((photos / "cat").iterdir())[:2] + sorted((photos / "dog").iterdir())[:2]
    csv = tmp_path / "labels.csv"
    rows = [f"{p},{p.parent.name}" for p in good] + ["/dev/zero,cat", f"{fifo},dog", f"{tmp_path / 'link.jpg'},dog"]
    csv.write_text("image,label\n" + "\n".join(rows) + "\n")
    coco = tmp_path / "coco.json"
    coco.write_text(json.dumps({"images": [{"id": i, "file_name": str(p)} for i, p in
                                           enumerate([*good, "/dev/zero", fifo])],
                                "annotations": [{"image_id": i, "caption": f"c{i}"} for i in range(6)]}))
    script = textwrap.dedent(f"""
        from multimodal_embed.evaluation.datasets import load_dataset
        for path in ({str(csv)!r}, {str(coco)!r}):
            d = load_dataset(path)
            print(sorted(d.images.errors), [h is None for h in d.images.hashes].count(False))
    """)
    proc = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[:2] == ["[4, 5, 6] 4", "[4, 5] 4"]


def test_data_files_themselves_must_be_regular_and_bounded(tmp_path, monkeypatch):
    fifo = _fifo(tmp_path / "labels.csv")
    t0 = time.monotonic()
    with pytest.raises(InvalidInputError, match="labels.csv: cannot be read .*not a regular file"):
        D.load_dataset(fifo, "zeroshot")
    assert time.monotonic() - t0 < 5
    big = tmp_path / "big.jsonl"
    big.write_text('{"image": "a.jpg", "label": "x"}\n' * 100)
    monkeypatch.setattr(D, "MAX_DATA_BYTES", 1000)
    with pytest.raises(InvalidInputError, match="big.jsonl: cannot be read .*larger than 1000 bytes"):
        D.load_dataset(big, "zeroshot")


def test_one_sha256_reader_refuses_fifos_at_once(tmp_path):
    from multimodal_embed.evaluation.datasets import file_sha256
    from multimodal_embed.index import scanning

    assert scanning.sha256_file is sha256_file  # one reader, re-exported
    f = tmp_path / "a.bin"
    f.write_bytes(b"abc")
    assert file_sha256(f) == sha256_file(f) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    with pytest.raises(OSError):
        sha256_file(_fifo(tmp_path / "p"))
    with pytest.raises(OSError):
        sha256_file("/dev/zero")


# -- item 9: outputs never replace a link, a folder or a device ----------------------------------------------------
def test_write_atomic_refuses_links_folders_and_devices(tmp_path):
    from multimodal_embed.index import shards

    assert shards.write_atomic is write_atomic  # one writer, re-exported
    target = tmp_path / "real.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    for bad, why in ((link, "symbolic link"), (tmp_path, "folder"), ("/dev/null", "not a regular file"),
                     (_fifo(tmp_path / "fifo.json"), "not a regular file"), (tmp_path / "no" / "x.json", "does not exist")):
        with pytest.raises(InvalidInputError, match=why):
            write_atomic(bad, lambda fh: fh.write(b"new"))
    assert os.path.islink(link) and target.read_text() == "old"
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    out = write_atomic(tmp_path / "new.json", lambda fh: fh.write(b"{}"))
    assert out.read_text() == "{}" and check_output_path(out) == out


def test_eval_checks_outputs_before_reading_any_data(tmp_path, capsys, monkeypatch):
    """--json to a link, a folder or a device and --plot with a bad suffix fail at once: the data set (a FIFO,
    which would block, or a missing path) is never read and no model loaded."""
    from multimodal_embed.evaluation import runner

    loaded = []
    monkeypatch.setattr(runner, "load_datasets", lambda *a, **k: loaded.append(a) or pytest.fail("data read"))
    target = tmp_path / "r.json"
    target.write_text("keep")
    (tmp_path / "l.json").symlink_to(target)
    data = str(tmp_path / "nothing")
    cases = [(["--json", str(tmp_path / "l.json")], "symbolic link"), (["--json", str(tmp_path)], "is a folder"),
             (["--json", "/dev/full"], "not a regular file"), (["--plot", str(tmp_path / "out.xyz")], "out.xyz"),
             (["--plot", str(tmp_path)], "got no suffix"), (["--plot", str(tmp_path / "d" / "p.png")], "does not exist")]
    for args, why in cases:
        assert main(["eval", data, "--model", "minilm-efficientnet-lite0", "--no-cache", *args]) == 4
        assert why in capsys.readouterr().err
    assert not loaded and target.read_text() == "keep"


def test_plot_needs_matplotlib_before_any_embedding(photos, tmp_path, capsys, monkeypatch):
    """Without matplotlib, --plot fails before a data set is read or an image embedded (issue 44.4)."""
    import builtins

    from multimodal_embed import Embedder

    calls = []
    for verb in ("embed_images_with_errors", "embed_text"):
        real = getattr(Embedder, verb)
        monkeypatch.setattr(Embedder, verb, lambda self, *a, _r=real, **k: calls.append(1) or _r(self, *a, **k))
    real_import = builtins.__import__

    def no_matplotlib(name, *a, **k):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    code = main(["eval", str(photos), "--model", "minilm-efficientnet-lite0", "--no-cache", "--plot",
                 str(tmp_path / "p.png"), "-q"])
    assert code != 0 and "needs matplotlib" in capsys.readouterr().err
    assert not calls and not (tmp_path / "p.png").exists()


# -- item 15: errors name the file and the line; duplicate ids alike ------------------------------------------------
def test_beir_errors_name_file_and_line(beir):
    queries = beir / "queries.jsonl"
    lines = queries.read_text(encoding="utf-8").splitlines()
    cases = [
        (lines[:2] + ['{"text": "no id"}'] + lines[2:], r"queries.jsonl line 3: no _id"),
        (lines[:3] + [lines[1]] + lines[3:], r"queries.jsonl line 4: duplicate _id .* \(first on line 2\)"),
    ]
    for new, pattern in cases:
        queries.write_text("\n".join(new) + "\n", encoding="utf-8")
        with pytest.raises(InvalidInputError, match=pattern):
            D.load_dataset(beir)
    queries.write_text("\n".join(lines) + "\n", encoding="utf-8")
    qrels = beir / "qrels" / "test.tsv"
    original = qrels.read_text()
    for grade in ("inf", "-inf", "nan", "1e300"):
        qrels.write_text(original + f"q0\td5\t{grade}\n")
        with pytest.raises(InvalidInputError, match=rf"test.tsv line {original.count(chr(10)) + 1}: score"):
            D.load_dataset(beir)
    qrels.write_text(original)
    corpus = beir / "corpus.jsonl"
    data = corpus.read_bytes().split(b"\n")
    corpus.write_bytes(b"\n".join(data[:4] + [b'{"_id": "x", "text": "caf\xe9"}'] + data[4:]))
    with pytest.raises(InvalidInputError, match=r"corpus.jsonl line 5: not UTF-8"):
        D.load_dataset(beir)
    corpus.write_bytes(b"\n".join(data[:2] + [data[0]] + data[2:]))
    with pytest.raises(InvalidInputError, match=r"corpus.jsonl line 3: duplicate _id"):
        D.load_dataset(beir)


def test_table_and_coco_errors_name_the_file(tmp_path):
    bad = tmp_path / "labels.csv"
    bad.write_bytes(b"image,label\na.jpg,cat\nb.jpg,\xff\xfe\n")
    with pytest.raises(InvalidInputError, match=r"labels.csv line 3: not UTF-8"):
        D.load_dataset(bad)
    coco = tmp_path / "c.json"
    coco.write_text(json.dumps({"images": [{"file_name": "a.jpg"}], "annotations": []}))
    with pytest.raises(InvalidInputError, match=r"c.json: not COCO-style.*KeyError"):
        D.load_dataset(coco)
    coco.write_text("[1, 2")
    with pytest.raises(InvalidInputError, match=r"c.json: not COCO-style"):
        D.load_dataset(coco)
    jl = tmp_path / "caps.jsonl"
    jl.write_text('{"image": "a.jpg", "caption": "x \u2028 y"}\n{"image": "b.jpg", "caption": "z"}\n')
    assert D.load_dataset(jl).captions == ["x \u2028 y", "z"]  # a U+2028 inside a JSON string is not a line break


# -- issue 44.4: the gallery layout, models checked before the first embedding ---------------------------------------
def _gallery(tmp_path):
    import shutil

    from tests.conftest import GALLERY

    return Path(shutil.copytree(GALLERY, tmp_path / "photos"))


def test_eval_runs_on_the_tours_gallery_folder(clip_folder, tmp_path, capsys):
    """``mmembed eval photos/`` on the Tour's copy of the sample photos: zero-shot on the labels and image-text
    with the queries, each photo counted once; --task keeps one half."""
    photos = _gallery(tmp_path)
    meta = json.loads((photos / "gallery.json").read_text())
    assert D.detect_task(photos) == "gallery"
    zs, it = D.load_datasets(photos)
    assert (zs.task, it.task) == ("zeroshot", "image-text")
    assert len(zs.images.files) == len(meta) == len(it.images.files) and not zs.images.errors
    assert sorted(zs.classes) == sorted({e["label"] for e in meta.values()})
    assert sorted(it.captions) == sorted(e["query"] for e in meta.values())
    assert main(["eval", str(photos), "--model", f"hf:{clip_folder}", "--no-cache", "-q", "--json",
                 str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "photos (zeroshot; 31 images, 31 classes" in out and "photos (image-text; 31 images, 31 captions" in out
    results = json.loads((tmp_path / "r.json").read_text())["results"]
    assert [r["task"] for r in results] == ["zeroshot", "image-text"] and all(r["counted"] == 31 for r in results)
    assert [d.task for d in D.load_datasets(photos, "image-text")] == ["image-text"]


def test_gallery_entries_are_checked(tmp_path):
    photos = _gallery(tmp_path)
    meta = photos / "gallery.json"
    for bad, why in (({"../outside.jpg": {"label": "x"}}, "inside the folder"), ({"/etc/x.jpg": {"label": "x"}},
                     "inside the folder"), ({"a.jpg": "cat"}, "expected"), ({"a.jpg": {"label": 3}}, "label must be"),
                     ([1, 2], "expected an object")):
        meta.write_text(json.dumps(bad))
        with pytest.raises(InvalidInputError, match=why):
            D.load_datasets(photos)
    meta.unlink()
    os.mkfifo(meta)  # a FIFO named gallery.json: refused at once
    with pytest.raises(InvalidInputError):
        D.load_datasets(photos)


def test_a_missing_model_is_named_before_the_first_embedding(clip_folder, captions, tmp_path, caplog, monkeypatch):
    import logging

    from multimodal_embed import Embedder

    events: list[str] = []
    for verb in ("embed_images_with_errors", "embed_text"):
        real = getattr(Embedder, verb)
        monkeypatch.setattr(Embedder, verb, lambda self, *a, _r=real, **k: events.append("embed") or _r(self, *a, **k))

    class Record(logging.Handler):
        def emit(self, record):
            if "not loaded" in record.getMessage():
                events.append("missing")

    handler = Record()
    logging.getLogger("multimodal_embed").addHandler(handler)
    try:
        code = main(["eval", str(captions), "--model", f"hf:{clip_folder}", "--model", "pypi:no-such-model",
                     "--no-cache", "-q"])
    finally:
        logging.getLogger("multimodal_embed").removeHandler(handler)
    assert code == 1 and events[0] == "missing" and "embed" in events
