"""ImageIndex: incremental indexing of real folders, crash safety under SIGKILL, concurrent readers, search."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from multimodal_embed import Embedder, ImageIndex, IndexMismatchError
from multimodal_embed.index import exact_search, parse_query

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def emb(fixtures_dir):
    return Embedder.from_pretrained(text=str(fixtures_dir / "text-v1.5-tiny"),
                                    vision=str(fixtures_dir / "vision-v1.5-tiny"))


def _stamps(data_dir, n):
    return sorted((data_dir / "tuxpaint-stamps").rglob("*.png"))[:n]


def _check_consistent(path):
    conn = sqlite3.connect(str(path))
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    ok = conn.execute("SELECT count(*) FROM files WHERE status = 'ok'").fetchone()[0]
    with_vec = conn.execute("SELECT count(*) FROM files f JOIN vectors v ON v.file_id = f.id "
                            "WHERE f.status = 'ok'").fetchone()[0]
    orphans = conn.execute("SELECT count(*) FROM vectors v LEFT JOIN files f ON f.id = v.file_id "
                           "WHERE f.id IS NULL OR f.status != 'ok'").fetchone()[0]
    dupes = conn.execute("SELECT count(*) - count(DISTINCT path) FROM files").fetchone()[0]
    meta = dict(conn.execute("SELECT key, value FROM meta"))
    slots = conn.execute("SELECT max(slot) FROM vectors").fetchone()[0]
    conn.close()
    assert ok == with_vec and orphans == 0 and dupes == 0
    store, rows = json.loads(meta["vector_store"]), int(meta["vector_rows"])
    assert slots is None or slots < rows
    width = {"f32": 4 * store["dim"], "i8": store["dim"], "bin": (store["dim"] + 7) // 8}
    for suffix, size in width.items():  # every committed row is in each stored tier's file
        f = Path(f"{path}-vectors{store['generation']}.{suffix}")
        if rows and {"f32": "float32", "i8": "int8", "bin": "binary"}[suffix] in store["tiers"]:  # 0: none yet
            assert f.stat().st_size >= rows * size
    return ok


def test_index_shared_folders(emb, data_dir, tmp_path):
    data_dir = data_dir.resolve()  # the index stores real paths (the shared folder may be reached by a symlink)
    manifest = json.loads((data_dir / "images-odd" / "manifest.json").read_text())
    index = ImageIndex.create(tmp_path / "a.mmindex", emb)
    r1 = index.add_folder(data_dir / "images-odd", show_progress=False)
    r2 = index.add_folder(data_dir / "tuxpaint-stamps", show_progress=False)
    odd = data_dir / "images-odd"
    want_bad = {str(odd / e["file"]) for e in manifest if e["expected"] == "error"}
    want_good = {str(odd / e["file"]) for e in manifest if e["expected"] == "embeds"}
    assert {p for p, _ in r1.failed} == want_bad and all(reason for _, reason in r1.failed)
    assert {p for p, _ in index.failures()} == want_bad
    stamps = {str(p) for p in (data_dir / "tuxpaint-stamps").rglob("*.png")}
    _, paths, mat = index.vectors()
    assert len(paths) == len(set(paths)) and set(paths) == want_good | stamps
    assert r2.embedded == len(stamps) and not r2.failed and mat.shape == (len(paths), 64)
    again = index.add_folder(data_dir / "images-odd", show_progress=False)
    again2 = index.add_folder(data_dir / "tuxpaint-stamps", show_progress=False)
    assert again.embedded == again2.embedded == 0 and again2.unchanged == len(stamps)
    assert again.unchanged == len(want_good)  # the bad files are failures again, not unchanged
    assert {p for p, _ in again.failed} == want_bad and again.known_failed == len(want_bad)
    # the vectors are the embedder's
    some = sorted(stamps)[:3]
    np.testing.assert_allclose(mat[[paths.index(p) for p in some]], emb.embed_images(some), atol=1e-6)
    _check_consistent(tmp_path / "a.mmindex")


def test_incremental_minimum_work(emb, data_dir, tmp_path):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    files = _stamps(data_dir, 7)
    for i, f in enumerate(files[:6]):
        shutil.copy(f, folder / ("sub" if i % 2 else "") / f"img{i}.png")
    (folder / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (folder / "notes.txt").write_text("not an image")
    index = ImageIndex.create(tmp_path / "i.mmindex", emb)
    r = index.add_folder(folder, show_progress=False)
    assert (r.embedded, len(r.failed)) == (6, 1) and "bad.jpg" in r.failed[0][0]
    # new content in one file, touch another, remove one, move one, copy one
    shutil.copy(files[6], folder / "img0.png")
    os.utime(folder / "sub" / "img3.png", ns=(1, 10**18))
    (folder / "sub" / "img1.png").unlink()
    os.rename(folder / "img2.png", folder / "sub" / "moved.png")
    shutil.copy(folder / "img4.png", folder / "copy_of_4.png")
    r = index.add_folder(folder, show_progress=False)
    assert (r.embedded, r.removed, r.moved, r.copied, r.unchanged) == (1, 1, 1, 1, 3), r
    assert r.known_failed == 1 and [p for p, _ in r.failed] == [str(folder / "bad.jpg")]  # still bad, said again
    _, paths, mat = index.vectors()
    assert str(folder / "sub" / "moved.png") in paths and str(folder / "img2.png") not in paths
    assert len(index) == 6
    np.testing.assert_allclose(mat[paths.index(str(folder / "img0.png"))],
                               emb.embed_images([files[6]])[0], atol=1e-6)
    shutil.copy(files[5], folder / "img0.png")  # now a copy of img5: its vector is reused
    r = index.add_folder(folder, show_progress=False)
    assert (r.embedded, r.copied) == (0, 1)
    assert index.add_folder(folder, show_progress=False).embedded == 0
    groups = index.duplicates(0.999)
    assert [str(folder / "copy_of_4.png"), str(folder / "img4.png")] in groups
    assert any(str(folder / "img0.png") in g and str(folder / "sub" / "img5.png") in g for g in groups)


def test_symlinks_leaving_the_folder_are_not_followed(emb, data_dir, tmp_path):
    outside, folder = tmp_path / "outside", tmp_path / "inside"
    outside.mkdir(), folder.mkdir()
    a, b = _stamps(data_dir, 2)
    shutil.copy(a, outside / "secret.png")
    shutil.copy(b, folder / "own.png")
    os.symlink(outside / "secret.png", folder / "link.png")
    os.symlink(outside, folder / "linked_dir")
    index = ImageIndex.create(tmp_path / "s.mmindex", emb)
    r = index.add_folder(folder, show_progress=False)
    assert index.vectors()[1] == [str(folder / "own.png")] and r.skipped_outside == [str(folder / "link.png")]
    hits = index.search(np.ones(64, np.float32), k=10)
    assert [h.path for h in hits] == [str(folder / "own.png")]
    index.add_folder(folder, follow_symlinks=True, show_progress=False)
    assert len(index) == 3


def test_search_equals_brute_force_and_mixes(emb, data_dir, tmp_path):
    index = ImageIndex.create(tmp_path / "q.mmindex", emb)
    index.add_folder(data_dir / "tuxpaint-stamps" / "animals", show_progress=False)
    _, paths, mat = index.vectors()
    q = emb.embed_text(["a small dog"], task="search_query")[0]
    want = np.argsort(-(mat @ q), kind="stable")[:7]
    hits = index.search("a small dog", k=7)
    assert [h.path for h in hits] == [paths[i] for i in want]
    np.testing.assert_allclose([h.score for h in hits], (mat @ q)[want], atol=1e-5)
    assert hits[0].size > 0 and hits[0].width and len(hits[0].sha256) == 64
    img = paths[3]
    by_image = index.search(img, k=1, include_query=True)
    assert by_image[0].path == img and by_image[0].score == pytest.approx(1.0, abs=1e-5)
    assert index.search(Path(img).read_bytes(), k=1, include_query=True)[0].path == img
    # weighted mix == normalised weighted sum of unit vectors
    t1, t2 = emb.embed_text(["golden retriever", "fruit"], task="search_query")
    i1 = emb.embed_images([img])[0]
    mix = 2 * t1 + i1 - t2
    mix /= np.linalg.norm(mix)
    np.testing.assert_allclose(index.query_vector([(2, "golden retriever"), (1, img), (-1, "fruit")]), mix,
                               atol=1e-6)
    np.testing.assert_allclose(index.query_vector(f"2:golden retriever + {img} - fruit"), mix, atol=1e-6)
    assert parse_query("2:a + b - 0.5:c") == [(2.0, "a"), (1.0, "b"), (-0.5, "c")]
    # filters
    some = index.search("a small dog", k=50, path_filter="*/amphibians/*")
    assert some and all("/amphibians/" in h.path for h in some)
    assert all(h.score >= 0.1 for h in index.search("a small dog", k=50, min_score=0.1))
    # chunked exact search equals a full sort
    rng = np.random.default_rng(0)
    m = rng.standard_normal((1000, 16)).astype(np.float32)
    qs = rng.standard_normal((3, 16)).astype(np.float32)
    _, r = exact_search(m, qs, 5, chunk_rows=64)
    np.testing.assert_array_equal(r, np.argsort(-(qs @ m.T), axis=1, kind="stable")[:, :5])


def test_cosine_thresholds_outside_minus_one_to_one_are_refused_by_the_library_too(emb, data_dir, tmp_path):
    """The CLI's and the library's one cosine check: min_score / threshold outside [-1, 1] (a percentage, NaN) is an
    error naming the argument, never a search that silently finds nothing."""
    from multimodal_embed.errors import InvalidInputError

    index = ImageIndex.create(tmp_path / "c.mmindex", emb)
    index.add_folder(data_dir / "tuxpaint-stamps" / "animals", show_progress=False)
    with pytest.raises(InvalidInputError, match=r"min_score: 2 is not a cosine"):
        index.search("a dog", k=3, min_score=2)
    with pytest.raises(InvalidInputError, match=r"min_score: nan is not a cosine"):
        index.search("a dog", k=3, min_score=float("nan"))
    with pytest.raises(InvalidInputError, match=r"threshold: 95 is not a cosine.*for 95%, give 0.95"):
        index.duplicates(threshold=95)
    assert len(index.search("a dog", k=3, min_score=-1.0)) == 3  # the bounds themselves are cosines
    assert index.duplicates(threshold=1.0) == index.duplicates(threshold=1)


def test_reopen_loads_the_recorded_model_and_refuses_another(emb, data_dir, tmp_path, fixtures_dir):
    path = tmp_path / "r.mmindex"
    with ImageIndex.create(path, emb) as index:
        index.add_folder(data_dir / "tuxpaint-stamps" / "animals" / "amphibians", show_progress=False)
        want = index.search("a frog", k=3)
    with ImageIndex.open(path) as reopened:  # no model given: the recorded one is loaded on demand
        assert reopened.search("a frog", k=3) == want
    other = Embedder.from_pretrained(vision=str(fixtures_dir / "vision-v1.5-tiny"))
    with pytest.raises(IndexMismatchError, match="differs"):
        ImageIndex.open(path, other)


def test_export_parquet(emb, data_dir, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    index = ImageIndex.create(tmp_path / "e.mmindex", emb)
    index.add_folder(data_dir / "tuxpaint-stamps" / "animals" / "amphibians", show_progress=False)
    out = index.export(tmp_path / "e.parquet")
    table = pq.read_table(out)
    _, paths, mat = index.vectors()
    assert table.column("path").to_pylist() == paths
    np.testing.assert_array_equal(np.array(table.column("vector").to_pylist(), np.float32), mat)
    assert json.loads(table.schema.metadata[b"multimodal_embed.model"])["dim"] == 64


WRITER = """
import sys
from multimodal_embed import Embedder, ImageIndex
emb = Embedder.from_pretrained(text=sys.argv[3] + "/text-v1.5-tiny", vision=sys.argv[3] + "/vision-v1.5-tiny")
index = ImageIndex.create(sys.argv[1], emb, exist_ok=True, store=sys.argv[4])
print("START", flush=True)
index.add_folder(sys.argv[2], batch_size=4, show_progress=False)
print("DONE", flush=True)
"""


def _count(path):
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            return conn.execute("SELECT count(*) FROM files").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:
        return -1


@pytest.mark.slow
@pytest.mark.parametrize("store", ["float32", "binary+int8"])
def test_sigkill_at_several_points_then_resume(emb, data_dir, fixtures_dir, tmp_path, store):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, f in enumerate(_stamps(data_dir, 80)):
        shutil.copy(f, folder / f"{i:03d}.png")
    (folder / "zz_bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    path = tmp_path / "k.mmindex"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    seen_by_reader, killed_at = [], []
    for target in (0, 8, 30, 60):  # rows committed before the kill (0: killed during start-up or the scan)
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(folder), str(fixtures_dir), store],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        deadline = time.time() + 120
        if target == 0:
            proc.stdout.readline()  # START: the index exists, the scan begins
        while target and time.time() < deadline and proc.poll() is None:
            n = _count(path)
            if n >= target:
                break
            time.sleep(0.01)
        if target and path.exists() and _count(path) > 0:  # a concurrent reader sees committed rows
            with ImageIndex.open(path) as reader:
                hits = reader.search(np.ones(64, np.float32), k=5)
                seen_by_reader.append(len(reader))
                assert len(hits) == min(5, len(reader))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL  # killed mid-run, not finished
        if path.exists():
            _check_consistent(path)
            killed_at.append(_count(path))
    # a normal run completes the job; the result equals a clean index
    index = ImageIndex.open(path, emb)
    index.add_folder(folder, show_progress=False)
    n = _check_consistent(path)
    assert n == 80 and [p for p, _ in index.failures()] == [str(folder / "zz_bad.png")]
    clean = ImageIndex.create(tmp_path / "clean.mmindex", emb, store=store)
    clean.add_folder(folder, show_progress=False)
    _, p1, m1 = index.vectors()
    _, p2, m2 = clean.vectors()
    order = np.argsort(p1)
    assert [p1[i] for i in order] == sorted(p2)
    np.testing.assert_allclose(m1[order], m2[np.argsort(p2)], atol=1e-6)
    assert seen_by_reader and max(seen_by_reader) > 0
    assert killed_at == sorted(killed_at) and killed_at[-1] < 81 and killed_at[-1] >= 60, killed_at


def test_faiss_ann_search_agrees_with_exact(emb, data_dir, tmp_path):
    pytest.importorskip("faiss")
    index = ImageIndex.create(tmp_path / "f.mmindex", emb)
    index.add_folder(data_dir / "tuxpaint-stamps" / "animals", show_progress=False)
    exact = index.search("a small dog", k=5)
    approx = index.search("a small dog", k=5, ann=True, nprobe=10_000)  # probing every list: exact
    assert [h.path for h in approx] == [h.path for h in exact]
    np.testing.assert_allclose([h.score for h in approx], [h.score for h in exact], atol=1e-5)
