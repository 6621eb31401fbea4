"""The CLI with compact stores: ``mmembed index --store``, ``search --rescore``, ``info`` and ``export``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from multimodal_embed import ImageIndex
from multimodal_embed.cli import EXIT_ERROR, EXIT_OK, EXIT_USAGE, main

GALLERY = Path(__file__).resolve().parents[2] / "multimodal_embed" / "demo_assets"


@pytest.fixture(scope="module")
def tiny(fixtures_dir) -> str:
    return str(fixtures_dir / "vision-v1.5-tiny")


def _folder(tmp_path: Path, n: int = 12) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in sorted(GALLERY.glob("*.jpg"))[:n]:
        shutil.copy(p, folder / p.name)
    return folder


def test_index_store_search_rescore_info_and_export(tiny, tmp_path, capsys):
    pq = pytest.importorskip("pyarrow.parquet")
    folder = _folder(tmp_path)
    index = tmp_path / "c.mmindex"
    assert main(["index", str(index), str(folder), "--model", tiny, "--store", "binary+int8", "-q"]) == EXIT_OK
    capsys.readouterr()
    assert main(["info", str(index)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "store:   binary+int8, size 64: 72 bytes per vector (binary 8 + int8 64); int8 ranges: fixed [-1, 1]" in out
    assert main(["info", str(index), "--json"]) == EXIT_OK
    store = json.loads(capsys.readouterr().out)["store"]
    assert store["bytes_per_vector"] == {"binary": 8, "int8": 64} and store["rows"] == store["live"] == 12
    query = str(folder / sorted(p.name for p in folder.iterdir())[3])
    results = {}
    for rescore in ("0", "4", "100"):
        assert main(["search", str(index), query, "--rescore", rescore, "-k", "3", "--json"]) == EXIT_OK
        results[rescore] = json.loads(capsys.readouterr().out)
    with ImageIndex.open(index) as idx:  # the CLI's answers are the library's
        for rescore, hits in results.items():
            want = idx.search(query, k=3, rescore=int(rescore))
            assert [h["path"] for h in hits] == [h.path for h in want]
            np.testing.assert_allclose([h["score"] for h in hits], [h.score for h in want], atol=1e-6)
    with pytest.raises(SystemExit) as exc:
        main(["search", str(index), query, "--rescore", "-1"])
    assert exc.value.code == EXIT_USAGE and "at least 0" in capsys.readouterr().err
    assert main(["export", str(index), str(tmp_path / "e.parquet")]) == EXIT_OK
    table = pq.read_table(tmp_path / "e.parquet")
    quant = json.loads(table.schema.metadata[b"multimodal_embed.quantization"])
    assert quant["tiers"] == ["binary", "int8"] and len(quant["int8"]["lo"]) == 64
    codes = np.array(table.column("int8").to_pylist(), np.int8)
    lo, hi = np.array(quant["int8"]["lo"], np.float32), np.array(quant["int8"]["hi"], np.float32)
    back = lo + (codes.astype(np.float32) + 128) * ((hi - lo) / np.float32(255))
    np.testing.assert_allclose(np.array(table.column("vector").to_pylist(), np.float32), back, atol=1e-6)
    bits = np.frombuffer(b"".join(table.column("binary").to_pylist()), np.uint8).reshape(len(codes), 8)
    np.testing.assert_array_equal(bits, np.packbits(back > 0, axis=1))


def test_index_store_changes_an_existing_index_and_refuses_lossy_to_richer(tiny, tmp_path, capsys):
    folder = _folder(tmp_path, 6)
    index = tmp_path / "c.mmindex"
    assert main(["index", str(index), str(folder), "--model", tiny, "-q"]) == EXIT_OK
    assert main(["index", str(index), str(folder), "--store", "int8", "-q"]) == EXIT_OK
    assert "vectors re-encoded as int8 (size 64)" in capsys.readouterr().out
    assert main(["index", str(index), str(folder), "--store", "float32", "-q"]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert "stores int8 vectors of size 64: it cannot become float32" in err and err.count("\n") == 1
    with pytest.raises(SystemExit) as exc:
        main(["index", str(index), str(folder), "--store", "float16"])
    assert exc.value.code == EXIT_USAGE
    assert "store must be one of float32, int8, binary, binary+int8, binary+float32" in capsys.readouterr().err
    with ImageIndex.open(index) as idx:
        assert idx.layout.tiers == ("int8",) and len(idx) == 6
