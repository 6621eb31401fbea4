"""`mmembed map` end to end (subprocesses with the built-in model): the page, the Parquet, exit codes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.map.conftest import KNOWN

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # a fresh interpreter and the model per run


def mmembed(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "multimodal_embed.cli", *args], cwd=cwd, env=env, check=False,
                          capture_output=True, text=True, timeout=600)


def test_map_of_an_index_with_labels_a_query_and_parquet(tmp_path, known_index):
    run = mmembed("map", str(known_index), "-o", "m.html", "--parquet", "m.parquet", "--layout", "pca",
                  "--labels", ",".join(KNOWN.values()), "--vocabulary", "none", "--query", "a red apple",
                  "--min-cluster-size", "3", "-q", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "30 points (pca)" in run.stdout and "1 queries" in run.stdout and "m.labels.parquet" in run.stdout
    page = (tmp_path / "m.html").read_text(encoding="utf-8")
    assert '"text":"a red apple"' in page and '"name":"apple"' in page
    import pyarrow.parquet as pq

    t = pq.read_table(tmp_path / "m.parquet")
    assert len(t) == 30 and set(t.column("label").to_pylist()) & set(KNOWN.values())


def test_unreadable_images_are_grey_points_and_exit_1(tmp_path, known_index, builtin):
    from multimodal_embed import ImageIndex

    shutil.copytree(Path(known_index).parent / "photos", tmp_path / "photos")
    with ImageIndex.create(tmp_path / "p.mmindex", builtin) as index:
        index.add_folder(tmp_path / "photos", show_progress=False)
    (tmp_path / "photos" / "horse" / "02.jpg").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    run = mmembed("map", "p.mmindex", "-o", "m.html", "--layout", "pca", "--vocabulary", "none", "--labels",
                  "horse,apple", "-q", cwd=tmp_path)
    assert run.returncode == 1, run.stderr[-2000:]
    assert "unreadable (a grey point)" in run.stderr and "02.jpg" in run.stderr
    assert (tmp_path / "m.html").is_file()


def test_usage_errors(tmp_path, known_index):
    run = mmembed("map", str(known_index), "-o", "m.png", cwd=tmp_path)
    assert run.returncode == 2 and "must end in .html" in run.stderr
    run = mmembed("map", str(known_index), "-o", "m.html", "--model", "open_clip:ViT-B-32", "--layout", "pca",
                  cwd=tmp_path)
    assert run.returncode == 4 and "the vectors were made by" in run.stderr  # as `mmembed search --model`
    assert not (tmp_path / "m.html").exists()


def test_map_of_a_text_collection_named_by_terms(tmp_path):
    run = mmembed("map", str(ROOT / "tests" / "fixtures" / "retrieval"), "--model", "minilm-efficientnet-lite0",
                  "-o", "t.html", "--layout", "pca", "-q", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "points (pca)" in run.stdout and "named" in run.stdout
    page = (tmp_path / "t.html").read_text(encoding="utf-8")
    assert "c-TF-IDF" in page
