"""nomic-embed-text-v2-moe through the public API: Embedder, hub-cache names, Matryoshka, pairing, precision, the
server and the evaluator, on the tiny fixture (random weights; the original's outputs in reference_io)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from multimodal_embed import Embedder
from multimodal_embed.encoders import Matryoshka
from multimodal_embed.errors import IncompatibleModelsError, InvalidInputError
from multimodal_embed.registry import lookup

VARIANT = "text-v2-moe-tiny"
REPO = "nomic-ai/nomic-embed-text-v2-moe"


@pytest.fixture(scope="module")
def folder(fixtures_dir):
    return fixtures_dir / VARIANT


@pytest.fixture(scope="module")
def v2(folder):
    return Embedder.from_pretrained(folder, device="cpu")


def _reference(folder):
    io = json.loads((folder / "reference_io.json").read_text())
    return io["inputs"], load_file(folder / "reference_io.safetensors")


def test_embed_text_matches_the_original_with_each_task_prefix(v2, folder):
    inputs, ref = _reference(folder)
    enc = v2.text_encoder
    assert (enc.version, enc.max_length, enc.dim, v2.query_task) == ("v2-moe", 512, 64, "search_query")
    for task in {t for t, _ in inputs}:
        rows = [i for i, (t, _) in enumerate(inputs) if t == task]
        got = v2.embed_text([inputs[i][1] for i in rows], task=task)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, ref["emb_d64"][rows].numpy(), atol=1e-6, err_msg=str(task))


def test_batched_equals_one_by_one_and_packed_equals_padded(v2, folder):
    inputs, ref = _reference(folder)
    prefixed = [("" if t is None else f"{t}: ") + s for t, s in inputs]
    batched = v2.embed_text(prefixed, task=None)
    alone = np.concatenate([v2.embed_text(t, task=None) for t in prefixed])
    assert np.abs(batched - alone).max() <= 1e-6
    enc = v2.text_encoder
    assert enc.packed
    enc.unpadded = False
    try:
        padded = v2.embed_text(prefixed, task=None)
    finally:
        enc.unpadded = None
    assert np.abs(batched - padded).max() <= 1e-6
    np.testing.assert_allclose(batched, ref["emb_d64"].numpy(), atol=1e-6)


def test_matryoshka_cuts_follow_the_v2_recipe(v2, folder):
    """Cut the pooled vector, then L2 (no LayerNorm). The tiny model is 64 wide, so 32 and 16 stand for 256."""
    from multimodal_embed.text import NOMIC_V2_MOE_MATRYOSHKA, NomicTextEncoder

    inputs, ref = _reference(folder)
    assert NOMIC_V2_MOE_MATRYOSHKA.trained == (768, 256) and not NOMIC_V2_MOE_MATRYOSHKA.layer_norm
    assert v2.text_encoder.matryoshka_dims == (64,)
    with pytest.raises(InvalidInputError, match="dimensionality"):
        v2.embed_text("hi", dimensionality=32)
    enc = v2.text_encoder
    cut = Embedder(NomicTextEncoder(enc.model, enc.tokenizer, matryoshka=Matryoshka((64, 32, 16)), max_length=512))
    prefixed = [("" if t is None else f"{t}: ") + s for t, s in inputs]
    for d in (32, 16):
        got = cut.embed_text(prefixed, task=None, dimensionality=d)
        assert got.shape == (len(inputs), d)
        np.testing.assert_allclose(got, ref[f"emb_d{d}"].numpy(), atol=1e-6)


def test_loads_by_registry_name_and_hub_id_from_the_hub_cache(folder, tmp_path, monkeypatch):
    spec = lookup("nomic-embed-text-v2-moe")
    assert (spec.license, spec.dim, spec.max_text_tokens, spec.vision) == ("apache-2.0", 768, 512, None)
    assert spec.uri == REPO and spec.repos == {"text": REPO} and "475M" in spec.notes
    snap = tmp_path / "hub" / f"models--{REPO.replace('/', '--')}" / "snapshots" / spec.revisions["text"]
    snap.mkdir(parents=True)
    for f in folder.iterdir():
        if not f.name.startswith("reference_io"):
            shutil.copy2(f, snap / f.name)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    by_name = Embedder.from_pretrained("nomic-embed-text-v2-moe", cache_dir=tmp_path / "hub", device="cpu")
    by_id = Embedder.from_pretrained(REPO, cache_dir=tmp_path / "hub", device="cpu")
    assert by_name.info["name"] == "nomic-embed-text-v2-moe" and by_name.modalities == ["text"]
    assert by_name.info["text"]["revision"] == spec.revisions["text"] == by_id.info["text"]["revision"]
    texts = ["Wie viele Menschen leben in Berlin?", "hi"]
    np.testing.assert_array_equal(by_name.embed_text(texts), by_id.embed_text(texts))
    with pytest.raises(InvalidInputError, match="no vision tower"):
        by_name.embed_images([np.zeros((8, 8, 3), dtype=np.uint8)])


def test_pairing_with_a_nomic_vision_tower_is_refused(folder, fixtures_dir):
    with pytest.raises(IncompatibleModelsError, match="text-only.*mmembed align"):
        Embedder.from_pretrained(text=folder, vision=fixtures_dir / "vision-v1.5-tiny", device="cpu")
    both = Embedder.from_pretrained(text=folder, vision=fixtures_dir / "vision-v1.5-tiny", device="cpu",
                                    allow_mismatched_towers=True)  # the user's explicit choice
    assert both.modalities == ["text", "image"]


def test_fast_precision_runs_bf16_within_its_tolerance(folder):
    """precision='fast' on a CPU with native bf16 runs the MoE in bf16 (router softmax still fp32): embeddings
    within cosine 0.99 of fp32 on the tiny random model (bf16 may flip a near-tied expert choice)."""
    from multimodal_embed.precision import CpuCapability, apply_precision

    inputs, _ = _reference(folder)
    texts = [s for _, s in inputs]
    exact = Embedder.from_pretrained(folder, device="cpu")
    fast = apply_precision(Embedder.from_pretrained(folder, device="cpu"), "fast",
                           capability=CpuCapability(isa="AVX512", native_bf16=True, model="test CPU"))
    assert fast.info["precision"]["towers"] == {"text": "bf16 (torch)"}
    assert next(fast.text_encoder.model.parameters()).dtype == torch.bfloat16
    a, b = exact.embed_text(texts), fast.embed_text(texts)
    cos = (a * b).sum(1)
    assert cos.min() >= 0.99 and np.abs(np.linalg.norm(b, axis=1) - 1).max() <= 1e-5
    # no OpenVINO graph for data-dependent routing: precision="int8" keeps the torch fp32 tower and says why
    assert fast.text_encoder.export_recipe is None


def test_served_with_dimensions_and_input_type(v2, folder):
    pytest.importorskip("fastapi")
    httpx = pytest.importorskip("httpx")
    from multimodal_embed.serving.app import create_app
    from tests.serving.conftest import running

    inputs, ref = _reference(folder)
    rows = [i for i, (t, _) in enumerate(inputs) if t == "search_query"]
    with running(create_app(embedders={"v2": v2})) as url:
        r = httpx.post(f"{url}/v1/embeddings", json={"model": "v2", "input": [inputs[i][1] for i in rows],
                                                     "input_type": "query"}, timeout=60)
        assert r.status_code == 200, r.text
        got = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
        np.testing.assert_allclose(got, ref["emb_d64"][rows].numpy(), atol=1e-6)
        r = httpx.post(f"{url}/v1/embeddings", json={"model": "v2", "input": "hi", "dimensions": 16}, timeout=60)
        assert r.status_code == 400 and "dimensions" in r.text  # 64 is this tiny model's only trained size


@pytest.mark.slow
def test_beir_text_retrieval_evaluates(v2, data_dir):
    from multimodal_embed.evaluation.runner import evaluate

    (result,) = evaluate([data_dir / "retrieval"], [v2], cache_dir=None, show_progress=False).results
    assert result.counted == 864
    assert 0 < result.metrics["R@100"] <= 1 and 0 <= result.metrics["nDCG@10"] <= 1


def test_cli_lists_it_and_embeds_with_it(folder, tmp_path, capsys):
    from multimodal_embed.cli import main

    assert main(["models", "--json"]) == 0
    (row,) = [r for r in json.loads(capsys.readouterr().out) if r["name"] == "nomic-embed-text-v2-moe"]
    assert (row["license"], row["uri"], row["vision"]) == ("apache-2.0", REPO, None) and "1.9 GB" in row["notes"]
    inputs, ref = _reference(folder)
    out = tmp_path / "q.npy"
    assert main(["embed", "--model", str(folder), "--text", inputs[0][1], "--task", "search_query",
                 "-o", str(out)]) == 0
    np.testing.assert_allclose(np.load(out), ref["emb_d64"][:1].numpy(), atol=1e-6)


def test_langchain_adapter_uses_its_prefixes(v2, folder):
    pytest.importorskip("langchain_core")
    from multimodal_embed.integrations.langchain import MultimodalEmbeddings

    inputs, ref = _reference(folder)
    lc = MultimodalEmbeddings(embedder=v2)
    np.testing.assert_allclose(lc.embed_query(inputs[0][1]), ref["emb_d64"][0].numpy(), atol=1e-6)  # search_query
    np.testing.assert_allclose(lc.embed_documents([inputs[1][1]])[0], ref["emb_d64"][1].numpy(), atol=1e-6)
    with pytest.raises(InvalidInputError, match="vision tower"):
        lc.embed_image(["x.png"])


def test_an_aligned_folder_as_vision_is_pointed_to_loading_it_whole(folder):
    from multimodal_embed.backends.aligned import BUILTIN_DIR

    aligned = BUILTIN_DIR / "minilm-efficientnet-lite0"
    assert (aligned / "align_config.json").is_file()
    with pytest.raises(IncompatibleModelsError, match="aligned model.*by itself"):
        Embedder.from_pretrained(text=folder, vision=aligned, device="cpu")
