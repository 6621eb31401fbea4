"""Rebuild ``tests/fixtures/`` from the developers' ``../shared`` (a maintainer's tool; the tests never read ../shared).

What it copies, and why only this (sources and licenses: ``tests/fixtures/LICENSE.md``):
- ``nomic/``: the tiny nomic checkpoints in the original hub format with the original implementation's reference
  outputs (the parity oracle). The tokenizer files, identical in both text folders, are stored once, in
  ``nomic/text-v1.5-tiny/`` (a complete hub-format folder that the notebook loads); ``text-v1-tiny/TOKENIZER`` says
  so and ``tests/conftest.py`` copies them back into that folder at test time. A folder with a tokenizer of its
  own (``text-v2-moe-tiny``: XLM-R) keeps its files; its ``sentencepiece.bpe.model`` is left out (the tokenizer
  loads from ``tokenizer.json``).
- ``images-odd/``: every odd or broken image file with its manifest (Pillow test images, PngSuite, EXIF examples).
- ``tuxpaint-stamps/``: the built-in model's held-out stamps (its validation split, for the model-card tests) and
  the few stamps the index/CLI/demo tests pick by name, each with its English caption (line 1 of its ``.txt``).
- ``retrieval/``: a BEIR-format known-item retrieval set made from the Tux Paint captions (queries are the stamps'
  folder and file names, the relevant document is the stamp's caption).
CIFAR-10 and Cranfield state no license, so nothing of them is copied: tests use the stamps above, the photos shipped
in ``multimodal_embed/demo_assets`` and images generated in the tests.

    python benchmarks/make_test_fixtures.py [--shared ../shared]
"""

from __future__ import annotations

import argparse
import filecmp
import json
import re
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "tests" / "fixtures"
TOKENIZER_FILES = ("special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt")
TOKENIZER_HOME = "text-v1.5-tiny"
NOT_COPIED = ("sentencepiece.bpe.model",)  # the slow tokenizer's model: tokenizer.json says the same
NAMED_STAMPS = ("frog", "dog", "apple_red", "carrot", "tree")


def copy_nomic(shared: Path) -> None:
    src, dst = shared / "fixtures" / "nomic", OUT / "nomic"
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*TOKENIZER_FILES, *NOT_COPIED))
    keeper = src / TOKENIZER_HOME
    for f in TOKENIZER_FILES:
        shutil.copy2(keeper / f, dst / TOKENIZER_HOME / f)
    for folder in sorted(p for p in src.iterdir() if p.is_dir() and p.name != TOKENIZER_HOME):
        present = [f for f in TOKENIZER_FILES if (folder / f).exists()]
        if not present:
            continue
        if len(present) != len(TOKENIZER_FILES) or not all(
                filecmp.cmp(folder / f, keeper / f, shallow=False) for f in present):
            for f in present:  # a tokenizer of its own: stored in the folder itself
                shutil.copy2(folder / f, dst / folder.name / f)
            continue
        (dst / folder.name / "TOKENIZER").write_text(f"{TOKENIZER_HOME}\n")  # copied back by tests/conftest.py


def copy_images_odd(shared: Path) -> None:
    dst = OUT / "images-odd"
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(shared / "data" / "images-odd", dst)


def stamp_subset(shared: Path) -> list[Path]:
    from multimodal_embed.align import is_validation, load_pairs

    root = shared / "data" / "tuxpaint-stamps"
    keep = {Path(p) for p, _, key in load_pairs(root) if is_validation(key, 20)}
    every = sorted(root.rglob("*.png"))
    keep |= {p for p in every if p.stem in NAMED_STAMPS}
    keep |= set(sorted((root / "animals").rglob("*.png"))[:12])
    return sorted(keep)


def copy_stamps(shared: Path) -> None:
    root, dst = shared / "data" / "tuxpaint-stamps", OUT / "tuxpaint-stamps"
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    shutil.copy2(root / "DEBIAN_COPYRIGHT", dst / "DEBIAN_COPYRIGHT")
    for png in stamp_subset(shared):
        rel = png.relative_to(root)
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(png, dst / rel)
        txt = png.with_suffix(".txt")
        if txt.is_file():  # the English caption only (line 1); the translations are not used
            (dst / rel).with_suffix(".txt").write_text(txt.read_text(encoding="utf-8").splitlines()[0] + "\n")


def make_retrieval(shared: Path) -> None:
    root, dst = shared / "data" / "tuxpaint-stamps", OUT / "retrieval"
    shutil.rmtree(dst, ignore_errors=True)
    (dst / "qrels").mkdir(parents=True)
    corpus, by_query = [], {}
    for i, txt in enumerate(sorted(root.rglob("*.txt"))):
        lines = txt.read_text(encoding="utf-8").splitlines()
        if not lines or not lines[0].strip():
            continue
        rel = txt.relative_to(root).with_suffix("")
        words = " ".join(re.sub(r"[^a-z]+", " ", part.lower()) for part in rel.parts).split()
        corpus.append({"_id": f"d{i}", "title": "", "text": lines[0].strip()})
        by_query.setdefault(" ".join(words), []).append(f"d{i}")  # one query per distinct name
    queries = [{"_id": f"q{j}", "text": text} for j, text in enumerate(by_query)]
    qrels = [f"q{j}\t{doc}\t1" for j, docs in enumerate(by_query.values()) for doc in docs]
    (dst / "corpus.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in corpus))
    (dst / "queries.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in queries))
    (dst / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(qrels) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    shared = parser.parse_args().shared
    copy_nomic(shared)
    copy_images_odd(shared)
    copy_stamps(shared)
    make_retrieval(shared)
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"tests/fixtures: {total / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
