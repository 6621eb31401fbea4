"""Issue 14 part B, item 9: Ray resume checks what each shard was made from (a real local Ray)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from multimodal_embed import Embedder
from multimodal_embed.errors import InvalidInputError

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow  # a Ray instance
from multimodal_embed.distributed import embed_dataset, read_shards


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


def test_resume_after_the_listing_changed(local_ray, data_dir, fixtures_dir, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    pngs = sorted((data_dir / "tuxpaint-stamps" / "animals").rglob("*.png"))
    for i, png in enumerate(pngs[:5]):
        shutil.copy(png, folder / f"{i + 10:02d}.png")
    vision = str(fixtures_dir / "vision-v1.5-tiny")
    out = tmp_path / "out"
    first = embed_dataset(folder, out, model=vision, num_actors=1, shard_rows=2)
    assert (first.shards_total, first.shards_written) == (3, 3)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["request"]["model"] == vision and len(manifest["shards"]) == 3

    shutil.copy(pngs[7], folder / "00_first.png")  # sorts first: every shard's rows shift by one
    again = embed_dataset(folder, out, model=vision, num_actors=1, shard_rows=2)
    assert (again.shards_total, again.shards_written, again.shards_recomputed) == (3, 3, 3)
    _, table = read_shards(out)
    paths = sorted(str(p) for p in folder.iterdir())
    assert table.column("path").to_pylist() == paths  # no row twice, the new file present
    got = np.array(table.column("vector").to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(got, Embedder.from_pretrained(vision).embed_images(paths), atol=1e-5)

    for p in sorted(folder.iterdir())[2:]:  # a shorter listing: shards past the end are removed
        p.unlink()
    short = embed_dataset(folder, out, model=vision, num_actors=1, shard_rows=2)
    assert (short.shards_total, short.shards_written, short.shards_removed) == (1, 0, 2)
    assert read_shards(out)[1].column("path").to_pylist() == paths[:2]
    assert embed_dataset(folder, out, model=vision, shard_rows=2).shards_written == 0

    with pytest.raises(InvalidInputError, match="model="):
        embed_dataset(folder, out, model=str(fixtures_dir / "text-v1.5-tiny"), kind="images", shard_rows=2)
    (out / "manifest.json").unlink()
    with pytest.raises(InvalidInputError, match="no manifest.json"):
        embed_dataset(folder, out, model=vision, shard_rows=2)
