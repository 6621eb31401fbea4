"""Ray (local, 2 CPUs): shards equal single-process embeddings, bad files become rows, kill + resume, ingest."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from multimodal_embed import Embedder, ImageIndex, IndexMismatchError

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow  # a Ray instance and subprocess jobs
from multimodal_embed.distributed import embed_dataset, read_shards

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def folder(data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("ray") / "images"
    root.mkdir()
    for i, png in enumerate(sorted((data_dir / "tuxpaint-stamps" / "animals").rglob("*.png"))[:10]):
        shutil.copy(png, root / f"{i:02d}.png")
    (root / "99_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n nope")
    return root


def test_images_equal_single_process_and_bad_files_are_rows(local_ray, folder, fixtures_dir, tmp_path):
    vision = str(fixtures_dir / "vision-v1.5-tiny")
    report = embed_dataset(folder, tmp_path / "out", model=vision, num_actors=2, shard_rows=4, batch_size=3)
    assert (report.shards_total, report.shards_written, report.rows, report.errors) == (3, 3, 11, 1)
    identity, table = read_shards(tmp_path / "out")
    paths = sorted(str(p) for p in folder.iterdir())
    assert table.column("id").to_pylist() == list(range(11)) and table.column("path").to_pylist() == paths
    status = table.column("status").to_pylist()
    assert status.count("error") == 1 and status[-1] == "error" and table.column("error").to_pylist()[-1]
    emb = Embedder.from_pretrained(vision)
    want = emb.embed_images(paths[:-1])
    got = np.array(table.column("vector").to_pylist()[:-1], dtype=np.float32)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert identity == emb.identity()
    # a re-run writes nothing
    again = embed_dataset(folder, tmp_path / "out", model=vision, shard_rows=4)
    assert (again.shards_written, again.shards_skipped) == (0, 3)

    # the index ingests the shards without embedding; another model is refused
    index = ImageIndex.create(tmp_path / "i.mmindex", emb)
    rep = index.add_embeddings(tmp_path / "out", root=folder)
    assert rep.embedded == 10 and len(rep.failed) == 1
    _, ipaths, mat = index.vectors()
    np.testing.assert_allclose(mat[np.argsort(ipaths)], want, atol=1e-6)
    other = ImageIndex.create(tmp_path / "o.mmindex",
                              Embedder.from_pretrained(text=str(fixtures_dir / "text-v1.5-tiny"), vision=vision))
    with pytest.raises(IndexMismatchError):
        other.add_embeddings(tmp_path / "out", root=folder)


def test_texts_equal_single_process(local_ray, fixtures_dir, tmp_path):
    texts = ["a frog", "", "the quick brown fox " * 30, "ünïcode", "a dog"]
    src = tmp_path / "texts.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    model = str(fixtures_dir / "text-v1.5-tiny")
    embed_dataset(src, tmp_path / "out", model=model, shard_rows=2, num_actors=2)
    _, table = read_shards(tmp_path / "out")
    assert table.column("text").to_pylist() == texts
    want = Embedder.from_pretrained(model).embed_text(texts, task="search_document")
    np.testing.assert_allclose(np.array(table.column("vector").to_pylist(), np.float32), want, atol=1e-6)


JOB = """
import sys
from multimodal_embed.distributed import embed_dataset
embed_dataset(sys.argv[1], sys.argv[2], model=sys.argv[3], num_actors=1, shard_rows=1, batch_size=1)
"""


def test_killed_job_resumes_with_every_row_once(folder, fixtures_dir, tmp_path):
    out = tmp_path / "out"
    vision = str(fixtures_dir / "vision-v1.5-tiny")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", JOB, str(folder), str(out), vision], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and len(list(out.glob("part-*.parquet"))) < 3 and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its Ray workers
    proc.wait()
    first = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    assert 3 <= len(first) < 11, first
    subprocess.run([sys.executable, "-c", JOB, str(folder), str(out), vision], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    assert all((out / name).stat().st_mtime_ns == t for name, t in first.items())  # not redone
    _, table = read_shards(out)
    ids = table.column("id").to_pylist()
    assert ids == list(range(11))  # every row exactly once
    assert not list(out.glob(".part-*"))
