"""The map's outputs: the self-contained HTML page, the Parquet table, thumbnails through the hardened loader."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from multimodal_embed.map.build import build_map
from multimodal_embed.map.export import labels_path, write_map_parquet
from multimodal_embed.map.html import map_payload, render_html, write_html
from multimodal_embed.map.sources import MapSource
from multimodal_embed.map.thumbs import make_thumbnails
from tests.map.conftest import blobs

HOSTILE = '<!--<script>x<img src=x onerror=alert(1)>'


def image_files(root, n: int, *, corrupt: tuple[int, ...] = (), hostile: int | None = None) -> list[str]:
    """``n`` small JPEGs of different colours (``corrupt`` ones are garbage bytes; ``hostile`` gets a name that
    would end a <script> element)."""
    paths = []
    for i in range(n):
        name = f"{HOSTILE}{i}.jpg" if i == hostile else f"img{i:03d}.jpg"
        p = root / name
        if i in corrupt:
            p.write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG" * 4)
        else:
            Image.new("RGB", (80, 60), ((i * 40) % 256, (i * 90) % 256, 200)).save(p, quality=90)
        paths.append(str(p))
    return paths


@pytest.fixture
def small_map(tmp_path):
    x, _ = blobs(n_per=10, k=3, d=16)
    paths = image_files(tmp_path, len(x), corrupt=(4,), hostile=7)
    return build_map(MapSource("image", paths, x), None, layout="pca", min_cluster_size=3)


def test_a_corrupt_image_is_a_grey_point_with_its_reason_and_the_others_have_thumbnails(small_map):
    assert small_map.errors[4] and "truncated" in small_map.errors[4]  # the reason the loader gives
    assert small_map.thumbnails[4] is None
    assert all(t is not None and t[:2] == b"\xff\xd8" for i, t in enumerate(small_map.thumbnails) if i != 4)
    with Image.open(__import__("io").BytesIO(small_map.thumbnails[0])) as im:
        assert max(im.size) == 64
    payload = map_payload(small_map)
    assert list(payload["err"]) == ["4"] and "4" not in payload["thumbs"] and len(payload["thumbs"]) == 29
    assert "1 unreadable (grey)" in payload["summary"]


def test_special_files_are_refused_without_blocking(tmp_path):
    import os

    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    thumbs, errors = make_thumbnails([str(fifo), str(tmp_path / "missing.jpg")])
    assert thumbs == [None, None] and "not a regular file" in errors[0] and "not found" in errors[1]


def test_the_thumbnail_budget_bounds_the_total(tmp_path):
    paths = image_files(tmp_path, 12)
    one = len(make_thumbnails(paths[:1])[0][0])
    thumbs, errors = make_thumbnails(paths, budget_bytes=3 * one)
    kept = [t for t in thumbs if t]
    assert 3 <= len(kept) <= 4 and sum(map(len, kept)) < 3 * one + max(map(len, kept))
    assert errors == [None] * 12  # past the budget: no thumbnail, not an error


def test_the_page_is_self_contained_and_untrusted_names_cannot_escape(small_map, tmp_path):
    page = render_html(small_map)
    assert page.count("</script>") == 2  # the data block's and the viewer's: a file name cannot close one
    assert HOSTILE not in page and "onerror=alert" in page  # present, but only as escaped JSON text
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # nothing fetched from a network
    assert "default-src 'none'" in page  # and the browser is told so (Content-Security-Policy)
    data = json.loads(re.search(r'<script type="application/json" id="map-data">(.*?)</script>', page,
                                re.DOTALL)
                      .group(1))
    assert data["items"][7].startswith(tmp_path.as_posix()) and HOSTILE in data["items"][7]
    assert data["links"][0] == (tmp_path / "img000.jpg").as_uri()
    assert len(data["x"]) == len(data["c"]) == 30
    out = write_html(small_map, tmp_path / "m.html")
    assert out.read_text(encoding="utf-8") == page


def test_parquet_has_the_columns_embedding_atlas_needs(small_map, tmp_path):
    import pyarrow.parquet as pq

    points, labels = write_map_parquet(small_map, tmp_path / "m.parquet")
    assert labels == labels_path(tmp_path / "m.parquet") == tmp_path / "m.labels.parquet"
    t = pq.read_table(points)
    assert {"x", "y", "cluster", "label", "path", "thumbnail", "error", "id", "score"} <= set(t.column_names)
    np.testing.assert_allclose(t.column("x").to_numpy(), small_map.xy[:, 0], rtol=1e-6)
    assert t.column("cluster").to_pylist() == [int(c) for c in small_map.cluster_ids]
    assert t.column("thumbnail").to_pylist()[4] is None and t.column("thumbnail").to_pylist()[0][:2] == b"\xff\xd8"
    assert t.column("error").to_pylist()[4] == small_map.errors[4]
    lt = pq.read_table(labels)
    assert lt.column_names == ["x", "y", "text", "priority"] and len(lt) == len(small_map.clusters)


def test_text_maps_are_named_by_terms_and_need_no_model(tmp_path):
    texts = [f"the cat number {i} sleeps" for i in range(15)] + [f"stock market report {i}" for i in range(15)]
    x, _ = blobs(n_per=15, k=2, d=16)
    result = build_map(MapSource("text", texts, x), None, layout="pca", min_cluster_size=4)
    names = {c.name for c in result.clusters}
    assert any("cat" in n for n in names) and any("stock" in n or "market" in n for n in names)
    assert result.thumbnails == [None] * 30 and "c-TF-IDF" in result.naming
    t = write_map_parquet(result, tmp_path / "t.parquet")[0]
    import pyarrow.parquet as pq

    assert pq.read_table(t).column("text").to_pylist() == texts


def test_a_sample_is_mapped_above_max_points():
    x, _ = blobs(n_per=20, k=2, d=8)
    src = MapSource("text", [f"t{i}" for i in range(40)], x)
    result = build_map(src, None, layout="pca", max_points=25, seed=1)
    assert len(result.items) == 25 and result.total_items == 40 and result.sampled
    assert list(result.rows) == sorted(result.rows) and result.items == [f"t{i}" for i in result.rows]
    assert "a sample of 40" in map_payload(result)["summary"]


@pytest.mark.slow  # imports embedding-atlas (pandas, duckdb) in a subprocess
def test_embedding_atlas_opens_the_parquet_as_it_is(small_map, tmp_path):
    import subprocess
    import sys
    import zipfile

    pytest.importorskip("embedding_atlas")
    points, labels = write_map_parquet(small_map, tmp_path / "m.parquet")
    bundle = tmp_path / "atlas.zip"
    run = subprocess.run([sys.executable, "-m", "embedding_atlas.cli", str(points), "--x", "x", "--y", "y",
                          "--image", "thumbnail", "--text", "label", "--labels", str(labels),
                          "--export-application", str(bundle)], check=False, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    import io

    import pyarrow.parquet as pq

    with zipfile.ZipFile(bundle) as z:
        table = pq.read_table(io.BytesIO(z.read("data/dataset.parquet")))
        meta = json.loads(z.read("data/metadata.json"))
    assert table.column("thumbnail").to_pylist()[0][:2] == b"\xff\xd8" and len(table) == 30
    props = json.dumps(meta)
    assert '"x"' in props and '"thumbnail"' in props and small_map.clusters[0].name in props
