"""Small evaluation data made from the shipped fixtures: a labelled photo folder, captioned stamps, the BEIR set."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from multimodal_embed import Embedder
from tests.conftest import FIXTURES, labelled_folder

CLASSES = ("cat", "dog", "car", "tree", "boat", "house")  # 6 classes: acc@5 is defined


@pytest.fixture(scope="session")
def clip_folder(tmp_path_factory) -> Path:
    from tests.backends.tiny import hf_folder

    return hf_folder(tmp_path_factory.mktemp("eval-clip"), "clip")


@pytest.fixture(scope="session")
def clip(clip_folder) -> Embedder:
    return Embedder.from_pretrained(f"hf:{clip_folder}")


@pytest.fixture(scope="session")
def nomic(fixtures_dir) -> Embedder:
    return Embedder.from_pretrained(text=str(fixtures_dir / "text-v1.5-tiny"),
                                    vision=str(fixtures_dir / "vision-v1.5-tiny"))


@pytest.fixture
def photos(tmp_path) -> Path:
    """An ImageFolder tree: 6 classes x 3 small JPEGs cut from the gallery photos."""
    return labelled_folder(tmp_path / "photos", CLASSES, per_class=3)


def stamp_pairs(n: int = 24) -> list[tuple[Path, str]]:
    """The first ``n`` Tux Paint stamps with an English caption (first line of the .txt beside them)."""
    out = []
    for txt in sorted((FIXTURES / "tuxpaint-stamps").rglob("*.txt")):
        image = txt.with_suffix(".png")
        line = txt.read_text(encoding="utf-8").splitlines()[:1]
        if image.is_file() and line and line[0].strip():
            out.append((image, line[0].strip()))
    return out[:n]


@pytest.fixture
def captions(tmp_path) -> Path:
    """A JSONL of image, caption: 24 stamps, a second caption for every third one (several captions per image)."""
    path = tmp_path / "stamps.jsonl"
    rows = []
    for i, (image, caption) in enumerate(stamp_pairs()):
        rows.append({"image": str(image), "caption": caption})
        if i % 3 == 0:
            rows.append({"image": str(image), "caption": f"a clip-art picture: {caption.lower()}"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def beir(tmp_path) -> Path:
    """The shipped BEIR set, copied (so a test may add files beside it)."""
    return Path(shutil.copytree(FIXTURES / "retrieval", tmp_path / "retrieval"))
