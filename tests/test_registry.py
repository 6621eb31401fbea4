"""Model names: the registry, scheme parsing, the offline error of every family, and import cost."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import multimodal_embed
from multimodal_embed import Embedder, ModelNotFoundError, list_models
from multimodal_embed.registry import lookup


def test_every_entry_resolves_to_a_loader_and_a_revision():
    from multimodal_embed.loading import parse_model_name

    models = list_models()
    assert {"nomic-embed-v1.5", "nomic-embed-v1"} <= {m.name for m in models}
    assert {m.family for m in models} == {"nomic", "open_clip", "hf", "aligned"}
    for spec in models:
        assert spec.dim > 0 and spec.license and spec.preprocessing and spec.max_text_tokens > 0
        parsed = parse_model_name(spec.name)  # a pure step: registry names resolve without disk or network
        family, ref, rev = parsed.family, parsed.ref, parsed.revision
        assert family == spec.family
        if spec.family == "nomic":
            # both towers, or a text-only model (nomic-embed-text-v2-moe)
            assert spec.text and set(spec.revisions) == ({"text", "vision"} if spec.vision else {"text"})
            assert all(len(r) == 40 or r == "main" for r in spec.revisions.values())
        elif spec.family == "aligned":
            assert ref == spec.ref and ref.startswith("builtin:")
        else:
            assert ref == spec.ref and rev == spec.revisions["model"] and len(rev) == 40
        assert json.dumps(spec.to_dict())
    v15 = lookup("nomic-embed-v1.5")
    assert v15.revisions["vision"] == "af2246fffdab78d8458418480e4886a8e48b70a7"


def test_unknown_names_suggest_close_matches():
    with pytest.raises(ModelNotFoundError, match="nomic-embed-v1.5"):
        Embedder.from_pretrained("nomic-embed-v15")
    with pytest.raises(ModelNotFoundError, match="list_models"):
        Embedder.from_pretrained("no-such-model-anywhere")


OFFLINE = """
import sys
from multimodal_embed import Embedder, ModelNotFoundError
try:
    Embedder.from_pretrained(sys.argv[1])
except ModelNotFoundError as exc:
    print("ERR", exc)
"""


@pytest.mark.parametrize("name", [
    "nomic-embed-v1.5",
    "nomic-ai/nomic-embed-text-v1.5",
    "clip-vit-b-32-laion2b",
    "open_clip:ViT-B-32/laion2b_s34b_b79k",
    "open_clip:hf-hub:laion/CLIP-ViT-B-16-DataComp.XL-s13B-b90K",
    "hf:openai/clip-vit-base-patch32",
    "siglip-base-patch16-224",
])
@pytest.mark.slow
def test_offline_uncached_download_is_one_clear_error(name, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-c", OFFLINE, name], capture_output=True, text=True, env=env,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("ERR "), proc.stdout
    assert "HF_HUB_OFFLINE" in lines[0] and "Download" in lines[0]
    assert "Traceback" not in proc.stderr and "ERROR" not in proc.stderr, proc.stderr


def test_import_is_cheap():
    code = ("import sys, time; t = time.perf_counter(); import multimodal_embed; dt = time.perf_counter() - t; "
            "heavy = [m for m in ('torch', 'open_clip', 'gradio', 'faiss', 'transformers', 'ray') if m in sys.modules]; "
            "print(heavy, dt)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "[]", out
    assert multimodal_embed.list_models  # lazily available
