"""Issue 14 part B: the index and the CLI against hostile files (FIFOs, links to devices, non-UTF-8 names,
unreadable files, corrupt or foreign index files, forged output lines), exit codes and atomic output."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from multimodal_embed import Embedder, ImageIndex
from multimodal_embed.cli import EXIT_ERROR, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, main
from multimodal_embed.errors import IndexCorruptError
from multimodal_embed.imagefiles import list_images, printable
from multimodal_embed.index import query_kind
from multimodal_embed.index.search import duplicate_groups

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "multimodal_embed" / "demo_assets"


@pytest.fixture(scope="module")
def emb(fixtures_dir):
    return Embedder.from_pretrained(text=str(fixtures_dir / "text-v1.5-tiny"),
                                    vision=str(fixtures_dir / "vision-v1.5-tiny"))


def _gallery(tmp_path: Path, n: int = 3) -> Path:
    folder = tmp_path / "gallery"
    folder.mkdir()
    for p in sorted(SAMPLE.glob("*.jpg"))[:n]:
        shutil.copy(p, folder / p.name)
    return folder


@pytest.fixture()
def index_file(emb, tmp_path):
    folder = _gallery(tmp_path)
    path = tmp_path / "a.mmindex"
    with ImageIndex.create(path, emb) as idx:
        idx.add_folder(folder, show_progress=False)
    return path


# -- items 3 and 4: special files, bad names, unreadable and vanishing files -----------------------------------
def test_fifo_and_device_links_are_skipped_not_read(emb, tmp_path):
    folder = _gallery(tmp_path, 2)
    os.mkfifo(folder / "pipe.png")
    os.symlink("/dev/zero", folder / "zero.png")
    with ImageIndex.create(tmp_path / "i.mmindex", emb) as idx:
        report = idx.add_folder(folder, follow_symlinks=True, show_progress=False)  # hung forever before
        assert report.embedded == 2 and len(idx) == 2
        assert sorted(Path(p).name for p, _ in report.skipped) == ["pipe.png", "zero.png"]
    assert list_images(folder) == sorted(str(p) for p in folder.glob("*.jpg"))


def test_a_vanished_file_does_not_stop_the_rest(emb, tmp_path, monkeypatch):
    folder = _gallery(tmp_path, 3)
    raw = os.path.join(os.fsencode(folder), b"bad\xff\xfename.jpg")
    shutil.copy(SAMPLE / "cat.jpg", raw)  # a name that is not UTF-8: indexed like the others
    vanishing = folder / "vanishing.jpg"
    shutil.copy(SAMPLE / "cat.jpg", vanishing)
    from multimodal_embed.index import scanning

    real_hash = scanning.sha256_file

    def hash_after_delete(path: str) -> str:  # the file goes away between the listing and the hash
        if path.endswith("vanishing.jpg"):
            os.unlink(path)
        return real_hash(path)

    monkeypatch.setattr(scanning, "sha256_file", hash_after_delete)
    with ImageIndex.create(tmp_path / "i.mmindex", emb) as idx:
        report = idx.add_folder(folder, show_progress=False)
        assert report.embedded == 4 and len(idx) == 4
        assert [Path(p).name for p, _ in report.failed] == ["vanishing.jpg"], report.failed


def test_names_that_are_not_utf8_are_indexed_shown_readably_and_open(emb, tmp_path):
    """Latin-1 names (older cameras, Windows shares): indexed beside the good images, kept byte for byte, shown
    with the odd bytes escaped, and a search hit's path opens the same file."""
    folder = _gallery(tmp_path, 3)
    (folder / "sub\xe9").mkdir()  # a UTF-8 folder name with a non-ASCII character, for contrast
    shutil.copy(SAMPLE / "dogs.jpg", folder / "sub\xe9" / "chien.jpg")
    latin1 = os.path.join(os.fsencode(folder), b"caf\xe9 cr\xe8me.jpg")
    shutil.copy(SAMPLE / "coffee.jpg", latin1)
    with ImageIndex.create(tmp_path / "i.mmindex", emb) as idx:
        report = idx.add_folder(folder, show_progress=False)
        assert (report.embedded, report.failed, report.skipped) == (5, [], [])
        hits = idx.search(str(SAMPLE / "coffee.jpg"), k=5)
        found = [h.path for h in hits if os.fsencode(h.path) == latin1]
        assert found and hits[0].path == found[0] and hits[0].score > 0.999
        with open(found[0], "rb") as fh:
            assert fh.read() == (SAMPLE / "coffee.jpg").read_bytes()
        assert printable(os.path.basename(found[0])) == "caf\\xe9 cr\\xe8me.jpg"
        assert idx.add_folder(folder, show_progress=False).unchanged == 5  # the bytes match on the next run
        os.unlink(latin1)
        assert idx.add_folder(folder, show_progress=False).removed == 1 and len(idx) == 4
        shutil.copy(SAMPLE / "coffee.jpg", latin1)
        idx.add_folder(folder, show_progress=False)
        table = pytest.importorskip("pyarrow.parquet").read_table(idx.export(tmp_path / "e.parquet"))
        shown = dict(zip(table.column("path_bytes").to_pylist(), table.column("path").to_pylist()))
        assert shown[latin1].endswith("caf\\xe9 cr\\xe8me.jpg")


UNREADABLE_SCRIPT = """
import sys
from multimodal_embed import Embedder, ImageIndex
emb = Embedder.from_pretrained(text=sys.argv[1], vision=sys.argv[2])
with ImageIndex.create(sys.argv[3], emb) as idx:
    report = idx.add_folder(sys.argv[4], show_progress=False)
    print(report.embedded, len(idx), [(p.rsplit('/', 1)[1], r) for p, r in idx.failures()])
"""


def test_unreadable_file_is_a_recorded_failure(emb, fixtures_dir, tmp_path):
    folder = _gallery(tmp_path, 2)
    locked = folder / "locked.jpg"
    shutil.copy(SAMPLE / "cat.jpg", locked)
    locked.chmod(0)
    cmd = [sys.executable, "-c", UNREADABLE_SCRIPT, str(fixtures_dir / "text-v1.5-tiny"),
           str(fixtures_dir / "vision-v1.5-tiny"), str(tmp_path / "i.mmindex"), str(folder)]
    if os.geteuid() == 0:  # root reads chmod 000 files: drop the capabilities that allow it
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: chmod 000 does not stop reads")
        cmd = [setpriv, "--inh-caps=-dac_override,-dac_read_search",
               "--bounding-set=-dac_override,-dac_read_search", *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    embedded, count, failures = proc.stdout.strip().split(" ", 2)
    assert (embedded, count) == ("2", "2") and "locked.jpg" in failures and "ermission" in failures
    locked.chmod(0o644)  # fixed: the next run retries it
    with ImageIndex.open(tmp_path / "i.mmindex", emb) as idx:
        assert idx.add_folder(folder, show_progress=False).embedded == 1 and len(idx) == 3


# -- items 10, 11: corruption is IndexCorruptError naming the file; foreign files are not modified ----------
def _damage(path: Path, how: str) -> None:
    if how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3])
    elif how == "header":
        data = bytearray(path.read_bytes())
        data[:16] = b"NOT A DATABASE!\x00"
        path.write_bytes(bytes(data))
    elif how == "flipped":
        data = bytearray(path.read_bytes())
        for i in range(100, len(data), 97):
            data[i] ^= 0xFF
        path.write_bytes(bytes(data))
    else:
        conn = sqlite3.connect(path)
        key, value = {"meta-json": ("model", "{not json"), "roots": ("roots", "[1, 2"),
                      "no-dim": ("model", "{}")}[how]
        conn.execute("UPDATE meta SET value = ? WHERE key = ?", (value, key))
        conn.commit()
        conn.close()


@pytest.mark.parametrize("how", ["truncated", "header", "flipped", "meta-json", "roots", "no-dim"])
def test_damaged_index_is_index_corrupt_error(index_file, how, capsys):
    conn = sqlite3.connect(index_file)
    conn.execute("PRAGMA journal_mode=DELETE")  # everything in the main file
    conn.close()
    _damage(index_file, how)
    with pytest.raises(IndexCorruptError, match=str(index_file)), ImageIndex.open(index_file) as idx:
        idx.vectors()
        idx.roots  # noqa: B018
    assert main(["search", str(index_file), "a cat"]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(index_file) in err and "Traceback" not in err


def test_foreign_sqlite_file_is_left_untouched(tmp_path, capsys):
    db = tmp_path / "foreign.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE notes (x TEXT)")
    conn.commit()
    conn.close()
    before = db.read_bytes()
    assert main(["search", str(db), "q"]) == EXIT_ERROR
    assert "not an image index" in capsys.readouterr().err
    assert db.read_bytes() == before  # still journal_mode=delete: not switched to WAL
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign.db"]


def test_index_of_a_missing_folder_creates_nothing(tmp_path, capsys):
    target = tmp_path / "new.mmindex"
    assert main(["index", str(target), str(tmp_path / "nonexistent")]) == EXIT_USAGE
    assert not target.exists() and "not a folder" in capsys.readouterr().err


def test_corrupt_label_cache_is_rebuilt(emb, tmp_path):
    from multimodal_embed.zeroshot import _MEMORY_CACHE, ZeroShotClassifier

    clf = ZeroShotClassifier(emb, ["cat", "dog"], templates="simple", cache_dir=tmp_path)
    clf.label_vectors(["cat", "dog"]) if hasattr(clf, "label_vectors") else clf.probabilities([SAMPLE / "cat.jpg"])
    (cache_file,) = tmp_path.glob("labels-*.npz")
    cache_file.write_bytes(b"PK\x03\x04 garbage")
    _MEMORY_CACHE.clear()
    probs = ZeroShotClassifier(emb, ["cat", "dog"], templates="simple", cache_dir=tmp_path).probabilities(
        [str(SAMPLE / "cat.jpg")])
    assert probs.shape == (1, 2)


# -- item 10: exit codes -------------------------------------------------------------------------------------
def test_usage_errors_exit_2(fixtures_dir, capsys):
    model = str(fixtures_dir / "text-v1.5-tiny")
    assert main(["embed", "--model", model]) == EXIT_USAGE
    assert main(["embed", "--ray", "--model", model]) == EXIT_USAGE
    assert main(["classify", "--model", model, str(SAMPLE / "cat.jpg")]) == EXIT_USAGE
    with pytest.raises(SystemExit) as exc:
        main(["index", "x.mmindex", ".", "--batch-size", "0"])
    assert exc.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "Traceback" not in err and "--batch-size" in err


def test_bad_bytes_on_stdin_exit_4_one_line(fixtures_dir):
    proc = subprocess.run([sys.executable, "-m", "multimodal_embed.cli", "embed", "--model",
                           str(fixtures_dir / "text-v1.5-tiny"), "--text-file", "-"], input=b"ok\n\xff\xfe bad\n",
                          capture_output=True, check=False, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    err = proc.stderr.decode()
    assert proc.returncode == EXIT_ERROR and "Traceback" not in err and err.count("\n") == 1, err
    assert "UTF-8" in err or "Unicode" in err


# -- item 7: atomic -o ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".jsonl", ".npy"])
def test_output_is_replaced_atomically(fixtures_dir, tmp_path, monkeypatch, capsys, suffix):
    model = str(fixtures_dir / "text-v1.5-tiny")
    out = tmp_path / f"out{suffix}"
    assert main(["embed", "--model", model, "--text", "a cat", "-o", str(out)]) == EXIT_OK
    old = out.read_bytes()
    from multimodal_embed import cli

    real_fsync = os.fsync

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cli.os, "fsync", full_disk)
    assert main(["embed", "--model", model, "--text", "a dog", "a bird", "-o", str(out)]) == EXIT_ERROR
    monkeypatch.setattr(cli.os, "fsync", real_fsync)
    err = capsys.readouterr().err
    assert "No space left" in err and "Traceback" not in err
    assert out.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({out.name, out.name + ".meta.jsonl"}
                                                                & {p.name for p in tmp_path.iterdir()})


# -- item 8: --dim for images --------------------------------------------------------------------------------
@pytest.mark.parametrize("dim", ["-5", "0", "100000", "10"])
def test_dim_is_checked_for_images(fixtures_dir, capsys, dim):
    code = main(["embed", "--model", str(fixtures_dir / "vision-v1.5-tiny"), "--images", str(SAMPLE / "cat.jpg"),
                 "--dim", dim])
    captured = capsys.readouterr()
    assert code == EXIT_ERROR and captured.out == "" and "dimensionality" in captured.err


# -- item 14: what is a path in a query -----------------------------------------------------------------------
def test_query_word_equal_to_a_file_name_is_text(index_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(SAMPLE / "cat.jpg", tmp_path / "red")
    assert query_kind("red") == "text"
    assert query_kind("./red") == "path" and query_kind(str(tmp_path / "red")) == "path"
    assert query_kind("HTTP://example.com/a.png") == "url"
    with ImageIndex.open(index_file) as idx:
        as_text = idx.query_vector("red")
        np.testing.assert_allclose(as_text, idx.query_vector(("red",)[0], texts_only=True), atol=1e-6)
        as_image = idx.query_vector("./red")
        assert float(as_text @ as_image) < 0.999
        np.testing.assert_allclose(idx.query_vector("./red", texts_only=True),
                                   idx.embedder.embed_text(["./red"], task=idx.embedder.query_task)[0]
                                   / np.linalg.norm(idx.embedder.embed_text(["./red"],
                                                                            task=idx.embedder.query_task)[0]),
                                   atol=1e-5)


# -- item 16: forged output lines, duplicates --------------------------------------------------------------------
def test_newlines_in_file_names_are_escaped(emb, tmp_path, capsys):
    folder = tmp_path / "g"
    folder.mkdir()
    evil = folder / "x.jpg\nmmembed: failed: forged.jpg: boom\n.jpg"
    shutil.copy(SAMPLE / "cat.jpg", evil)
    shutil.copy(SAMPLE / "cat.jpg", folder / "copy.jpg")
    path = tmp_path / "i.mmindex"
    with ImageIndex.create(path, emb) as idx:
        idx.add_folder(folder, show_progress=False)
    assert main(["search", str(path), "a cat", "-k", "5"]) == EXIT_OK
    assert main(["dedupe", str(path)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "\\nmmembed: failed: forged.jpg" in out
    assert not any(line.startswith("mmembed:") for line in out.splitlines())


def _naive_groups(paths, mat, threshold):
    parent = list(range(len(paths)))

    def find(i):
        while parent[i] != i:
            i = parent[i]
        return i

    sims = mat @ mat.T
    for i in range(len(paths)):
        for j in range(i + 1, len(paths)):
            if sims[i, j] >= threshold:
                parent[find(i)] = find(j)
    groups = {}
    for i, p in enumerate(paths):
        groups.setdefault(find(i), []).append(p)
    return sorted((sorted(g) for g in groups.values() if len(g) > 1), key=lambda g: g[0])


@pytest.mark.parametrize("chunk", [1, 7, 1 << 22])
def test_duplicate_groups_match_the_pairwise_definition(monkeypatch, chunk):
    from multimodal_embed.index import search

    monkeypatch.setattr(search, "DUP_CHUNK_PAIRS", chunk)
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(2, 50))
        mat = rng.standard_normal((n, 3)).astype(np.float32)
        mat /= np.linalg.norm(mat, axis=1, keepdims=True)
        paths = [f"p{i:02d}" for i in range(n)]
        assert duplicate_groups(paths, mat, 0.8) == _naive_groups(paths, mat, 0.8)


def test_duplicate_groups_of_8k_near_identical_vectors_finish():
    rng = np.random.default_rng(1)
    mat = rng.standard_normal(384).astype(np.float32) + 0.01 * rng.standard_normal((8000, 384)).astype(np.float32)
    mat /= np.linalg.norm(mat, axis=1, keepdims=True)
    start = time.monotonic()
    groups = duplicate_groups([f"{i:05d}" for i in range(8000)], mat, 0.95)
    assert len(groups) == 1 and len(groups[0]) == 8000
    assert time.monotonic() - start < 60  # was about 40 s and 1.8 GB; a generous bound, not a benchmark


def test_printable_escapes_controls():
    assert printable("a\nb\r\x1b\\\udcff") == "a\\nb\\r\\x1b\\\\\\xff"  # an undecodable byte as its value
    assert json.dumps(printable("é")) == '"\\u00e9"'


def test_embed_folder_reports_fifos_embeds_odd_names_and_keeps_the_rest(fixtures_dir, tmp_path, capsys):
    folder = _gallery(tmp_path, 2)
    shutil.copy(SAMPLE / "cat.jpg", os.path.join(os.fsencode(folder), b"bad\xffname.jpg"))
    os.mkfifo(folder / "pipe.png")
    code = main(["embed", "--model", str(fixtures_dir / "vision-v1.5-tiny"), "--images", str(folder)])
    captured = capsys.readouterr()
    assert code == EXIT_PARTIAL
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert len(rows) == 3  # JSON keeps the name's bytes (as a surrogate escape)
    assert sum(os.fsencode(row["path"]).endswith(b"/bad\xffname.jpg") for row in rows) == 1
    assert "pipe.png" in captured.err and "bad" not in captured.err
