"""The package's shape: no import cycles, one image-file walker, one loader table, one source of pinned revisions."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "multimodal_embed"


def _import_graph(root: Path) -> dict[str, set[str]]:
    """module -> package modules it imports (module-level, function-level and TYPE_CHECKING imports all count)."""
    top = root.name
    mods = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = (path, path.name == "__init__.py")
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, (path, is_pkg) in mods.items():
        pkg = mod if is_pkg else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            for target in names:
                if target in mods and target not in (mod, top) and not mod.startswith(target + "."):
                    graph[mod].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_package_has_no_import_cycles():
    graph = _import_graph(PACKAGE)
    assert "multimodal_embed.loading" in graph and graph["multimodal_embed.embedder"]  # the walk saw real edges
    assert _cycles(graph) == []


def test_the_cycle_check_finds_a_cycle(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from .sub import b\n")
    (pkg / "sub" / "b.py").write_text("from ..a import f\n")
    (pkg / "c.py").write_text("from . import a\n")
    assert _cycles(_import_graph(pkg)) == [["pkg.a", "pkg.sub.b"]]


def _tree(root: Path) -> None:
    for rel in ("b/x.JPG", "a.png", "a.avif", "b/c/y.heic", "notes.txt", "z.jpeg"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"not really an image")
    (root / "folder.jpg").mkdir()  # a folder with an image name is not an image
    (root / "b" / "loop").symlink_to(root, target_is_directory=True)  # never entered: no endless walk


def test_one_walker_for_every_caller(tmp_path):
    from multimodal_embed.cli import _image_paths
    from multimodal_embed.distributed import list_inputs
    from multimodal_embed.imagefiles import IMAGE_EXTENSIONS, list_image_paths, list_images

    _tree(tmp_path)
    want = [str(tmp_path / r) for r in ("a.avif", "a.png", "b/c/y.heic", "b/x.JPG", "z.jpeg")]
    assert list_images(tmp_path) == want
    assert list_images(tmp_path, recursive=False) == [str(tmp_path / r) for r in ("a.avif", "a.png", "z.jpeg")]
    assert list_inputs(tmp_path) == ("images", want)
    assert _image_paths([str(tmp_path), "https://example.org/x.png"]) == want + ["https://example.org/x.png"]
    assert list_image_paths([str(tmp_path / "notes.txt")]) == [str(tmp_path / "notes.txt")]  # files: as given
    assert {".avif", ".heic", ".jpg"} <= IMAGE_EXTENSIONS


def test_alignment_reads_folders_through_the_one_walker(tmp_path):
    from multimodal_embed.align import load_pairs
    from multimodal_embed.imagefiles import list_images

    _tree(tmp_path)
    for rel in ("a.png", "b/x.JPG", "b/c/y.heic"):
        (tmp_path / rel).with_suffix(".txt").write_text(f"caption of {rel}\n")
    pairs = load_pairs(tmp_path)
    assert [p for p, _, _ in pairs] == [p for p in list_images(tmp_path) if Path(p).with_suffix(".txt").is_file()]
    src = (PACKAGE / "align.py").read_text()
    assert "os.walk" not in src and ".rglob(" not in src and "IMAGE_EXTENSIONS" not in src


def test_from_pretrained_reads_as_a_sentence():
    """The entry point stays short: name in, towers loaded by loading.py, precision policy, Embedder out."""
    tree = ast.parse((PACKAGE / "embedder.py").read_text())
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "from_pretrained")
    start = min([fn.lineno] + [d.lineno for d in fn.decorator_list])
    assert fn.end_lineno - start + 1 <= 60


def test_contained_walk_reports_links_leaving_the_root(tmp_path):
    from multimodal_embed.imagefiles import iter_images

    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "o.png").write_bytes(b"x")
    (root / "in.png").write_bytes(b"x")
    (root / "link.png").symlink_to(outside / "o.png")
    (root / "linkdir").symlink_to(outside, target_is_directory=True)
    left: list[str] = []
    got = [p for p, _ in iter_images(os.path.realpath(root), follow_symlinks=True, contain=True,
                                     on_outside=left.append)]
    assert got == [str(root / "in.png")] and left == [str(root / "link.png")]
    assert sorted(p for p, _ in iter_images(root)) == [str(root / "in.png"), str(root / "link.png")]


def test_zero_shot_evaluate_lists_what_the_index_lists(tmp_path):
    """ZeroShotClassifier.evaluate reads class folders with the shared walker: .avif / .heic files are no longer
    silently skipped (they come back as decode failures when Pillow cannot open them)."""
    from multimodal_embed.imagefiles import list_image_files

    _tree(tmp_path)
    assert [p.name for p in list_image_files(tmp_path / "b" / "c", recursive=False)] == ["y.heic"]
    import multimodal_embed.zeroshot as zs

    assert not hasattr(zs, "IMAGE_EXTENSIONS")


def test_names_parse_without_disk_or_network_and_a_family_is_one_row(tmp_path, monkeypatch):
    from multimodal_embed import loading

    assert loading.parse_model_name("open_clip:ViT-B-32/openai").family == "open_clip"
    assert loading.parse_model_name("hf:org/repo", "abc").revision == "abc"
    builtin = loading.parse_model_name("builtin:minilm-efficientnet-lite0")
    assert (builtin.family, builtin.ref) == ("aligned", "builtin:minilm-efficientnet-lite0")
    assert loading.parse_model_name("org/some-text-model").family is None  # decided from its files later
    for family in loading.FAMILIES.values():
        assert callable(family.load_function())

    # a new backend family: one row (scheme and folder marker), nothing else to edit
    monkeypatch.setitem(loading.FAMILIES, "toy", loading.Family("json:loads", scheme="toy:", marker="toy.json"))
    assert loading.parse_model_name("toy:thing").ref == "thing"
    (tmp_path / "toy.json").write_text("{}")
    found = loading.detect_family(loading.parse_model_name(str(tmp_path)))
    assert (found.family, found.ref) == ("toy", str(tmp_path))


def test_pinned_revisions_come_from_the_registry():
    from multimodal_embed import hub, registry

    assert not hasattr(hub, "PINNED_REVISIONS")
    for spec in registry.list_models():
        for key, repo in spec.repos.items():
            assert hub.default_revision(repo) == spec.revisions[key]
    assert hub.default_revision("someone/unknown") == "main"


def test_the_encoders_satisfy_the_contract(minilm_dir):
    import torch

    from multimodal_embed import Embedder
    from multimodal_embed.encoders import Scoring, TextEncoder

    emb = Embedder.from_pretrained(text=str(minilm_dir), device="cpu")
    assert isinstance(emb.text_encoder, TextEncoder)
    assert emb.scoring == Scoring() and emb.text_encoder.dtype == torch.float32
    assert emb.info["text"]["max_length"] == emb.text_encoder.max_length == emb.max_text_length
    with pytest.raises(Exception, match="no vision tower"):
        emb.embed_images([b"x"])
