"""``mmembed eval``: the numbers equal the API's, several models side by side, JSON settings, the plot, failures."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from multimodal_embed.cli import main
from multimodal_embed.evaluation.runner import evaluate


@pytest.fixture(scope="module")
def open_clip_folder(tmp_path_factory):
    from tests.backends.tiny import open_clip_folder

    return open_clip_folder(tmp_path_factory.mktemp("eval-oc"))


def test_cli_numbers_equal_the_api(clip, clip_folder, open_clip_folder, photos, captions, beir, tmp_path, capsys):
    (photos / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    models = [f"hf:{clip_folder}", f"open_clip:local-dir:{open_clip_folder}"]
    out, png = tmp_path / "eval.json", tmp_path / "eval.png"
    argv = ["eval", str(photos), str(captions), str(beir), "--templates", "simple", "--cache-dir",
            str(tmp_path / "cache"), "--json", str(out), "--plot", str(png), "-q"]
    for m in models:
        argv += ["--model", m]
    code = main(argv)
    stdout, stderr = capsys.readouterr()
    assert code == 1  # the broken image: listed, the rest counted
    assert f"mmembed: failed: {photos / 'cat' / 'broken.jpg'}: " in stderr
    report = json.loads(out.read_text())
    api = evaluate([photos, captions, beir], models, templates="simple", cache_dir=None, show_progress=False)
    assert [(r["dataset"], r["model"], r["dim"]) for r in report["results"]] == \
        [(r.dataset, r.model, r.dim) for r in api.results]
    assert len(report["results"]) == 6
    for got, want in zip(report["results"], api.results):
        assert got["metrics"] == want.to_dict()["metrics"]  # NaN (acc@5 below 5 classes) is null in both
        assert got["counted"] == want.counted
    settings = report["settings"]
    assert [m["name"] for m in settings["models"]] == models
    assert {d["task"] for d in settings["datasets"]} == {"zeroshot", "image-text", "text-retrieval"}
    assert all(len(d["sha256"]) == 64 for d in settings["datasets"]) and settings["cpu"] and settings["torch"]
    # the Markdown tables: one per data set, a row per model
    for name in ("photos", "stamps", "retrieval"):
        assert f"\n{name} (" in "\n" + stdout
    assert stdout.count(f"| hf:{clip_folder} |") == 3 and "| nDCG@10 | MRR@10 | R@100 |" in stdout
    with Image.open(png) as im:
        assert im.size[0] > 600 and im.size[1] > 300
    # a second run: everything from the cache
    assert main(argv + ["--json", str(tmp_path / "again.json")]) == 1
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["settings"]["cache_misses"] == 0 and again["results"] == report["results"]


def test_cli_errors(photos, tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nothing-here"), "--model", "minilm-efficientnet-lite0"]) == 4
    assert "nothing-here: no such file or folder" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("file,colour\na.png,red\n")
    assert main(["eval", str(bad), "--model", "minilm-efficientnet-lite0"]) == 4
    assert "needs a label column" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", str(photos), "--dim", "64,abc"])
    with pytest.raises(SystemExit):
        main(["eval", str(photos), "--task", "ranking"])


def test_a_missing_model_is_reported_and_the_others_compared(clip_folder, captions, tmp_path, capsys):
    argv = ["eval", str(captions), "--model", "pypi:no-such-model", "--model", f"hf:{clip_folder}", "--no-cache",
            "--json", str(tmp_path / "r.json"), "-q"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "mmembed: failed: model pypi:no-such-model: unknown model name 'pypi:no-such-model'" in err
    results = json.loads((tmp_path / "r.json").read_text())["results"]
    assert [(r["model"], r["note"], bool(r["metrics"])) for r in results] == \
        [("pypi:no-such-model", "not loaded", False), (f"hf:{clip_folder}", "", True)]
    assert main(["eval", str(captions), "--model", "pypi:no-such-model", "--no-cache", "-q"]) == 3  # nothing to run
