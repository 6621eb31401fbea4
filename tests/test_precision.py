"""The CPU precision policy and the OpenVINO engine (fp32 graph for the fast mode, int8 weights on request): the
choice, the warning, the cache, and quality on real weights (MiniLM on Cranfield, the built-in aligned model on
CIFAR-10 / Tux Paint held-out samples)."""

from __future__ import annotations

import importlib.util
import json
import warnings

import numpy as np
import pytest
import torch

from multimodal_embed import Embedder
from multimodal_embed import precision as prec
from multimodal_embed.errors import InvalidInputError
from multimodal_embed.precision import CpuCapability, apply_precision, choose_precision, cpu_capability

from .conftest import GALLERY

AVX2 = CpuCapability(isa="AVX2", native_bf16=False, model="an AVX2 CPU")
AMX = CpuCapability(isa="AVX512", native_bf16=True, model="an AMX CPU", flags=frozenset({"amx_bf16"}))
needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None
                                    or importlib.util.find_spec("nncf") is None,
                                    reason="pip install 'multimodal-embed[fast]'")


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MMEMBED_CACHE", str(tmp_path_factory.getbasetemp() / "mmembed-cache"))


# -- policy --------------------------------------------------------------------------------------------------
def test_policy_exact_by_default_and_fast_follows_the_hardware(monkeypatch):
    assert choose_precision(None, "cpu", AVX2).mode == "fp32"
    assert choose_precision("exact", "cpu", AMX).mode == "fp32"
    fast_avx2 = choose_precision("fast", "cpu", AVX2)
    assert (fast_avx2.mode, fast_avx2.engine) == ("fp32", "openvino") and "no native bf16" in fast_avx2.reason
    assert (choose_precision("int8", "cpu", AVX2).mode, choose_precision("int8", "cpu", AMX).mode) == ("int8", "int8")
    fast_amx = choose_precision("fast", "cpu", AMX)
    assert (fast_amx.mode, fast_amx.engine) == ("bf16", "torch") and "AMX" in fast_amx.reason
    assert choose_precision("fast", "cuda", AVX2).mode == "device"
    # the default probe is what the policy reads: patch only the probe
    monkeypatch.setattr(prec, "cpu_capability", lambda: AMX)
    assert choose_precision("fast").mode == "bf16"
    monkeypatch.setattr(prec, "cpu_capability", lambda: AVX2)
    assert choose_precision("fast").engine == "openvino"
    with pytest.raises(InvalidInputError, match="turbo"):
        choose_precision("turbo")


def test_capability_probe_reads_this_machine():
    cap = cpu_capability()
    assert cap.isa == torch.backends.cpu.get_cpu_capability()
    assert cap.native_bf16 == bool({"avx512_bf16", "amx_bf16"} & cap.flags)
    assert cap.model


def test_bf16_on_an_emulating_cpu_warns_once_with_the_reason(monkeypatch):
    monkeypatch.setattr(prec, "_WARNED_BF16", False)
    assert not prec.warn_if_slow_dtype(torch.bfloat16, "cpu", AMX)
    assert not prec.warn_if_slow_dtype(torch.float32, "cpu", AVX2)
    assert not prec.warn_if_slow_dtype(torch.bfloat16, "cuda", AVX2)
    with pytest.warns(RuntimeWarning, match="no native bf16.*GFLOP/s"):
        assert prec.warn_if_slow_dtype(torch.bfloat16, "cpu", AVX2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not prec.warn_if_slow_dtype(torch.bfloat16, "cpu", AVX2)  # once


def test_resolve_dtype_warns_on_this_cpu_when_bf16_is_emulated(monkeypatch):
    from multimodal_embed.utils import resolve_dtype

    monkeypatch.setattr(prec, "_WARNED_BF16", False)
    if cpu_capability().native_bf16:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert resolve_dtype("bfloat16", torch.device("cpu")) is torch.bfloat16
    else:
        with pytest.warns(RuntimeWarning, match="bfloat16"):
            assert resolve_dtype("bfloat16", torch.device("cpu")) is torch.bfloat16


def test_bf16_choice_casts_the_towers(fixtures_dir):
    emb = Embedder.from_pretrained(text=str(fixtures_dir / "text-v1.5-tiny"))
    exact = emb.embed_text(["a short text", "another one"])
    apply_precision(emb, "fast", capability=AMX)
    assert emb.info["precision"]["mode"] == "bf16" and emb.info["dtype"] == "bfloat16"
    assert emb.text_encoder.dtype is torch.bfloat16
    assert (emb.embed_text(["a short text", "another one"]) * exact).sum(1).min() > 0.99


def test_precision_with_a_dtype_is_refused(fixtures_dir):
    with pytest.raises(InvalidInputError, match="dtype"):
        apply_precision(Embedder.from_pretrained(text=str(fixtures_dir / "text-v1.5-tiny"), dtype="float16"),
                        "fast", capability=AVX2)


# -- the OpenVINO engine ----------------------------------------------------------------------------------------
@needs_openvino
def test_fast_on_avx2_keeps_the_nomic_text_tower_exact_and_int8_quantises_it(fixtures_dir):
    folder = str(fixtures_dir / "text-v1.5-tiny")
    texts = ["hi", "a somewhat longer sentence about boundary layers " * 3, "x " * 300, ""]
    exact = Embedder.from_pretrained(text=folder).embed_text(texts, dimensionality=None)
    fast = apply_precision(Embedder.from_pretrained(text=folder), "fast", capability=AVX2)
    info = fast.info["precision"]
    assert (info["requested"], info["mode"], info["engine"]) == ("fast", "fp32", "openvino")
    assert info["towers"]["text"].startswith("fp32 (torch") and "0.83" in info["towers"]["text"]
    assert np.array_equal(fast.embed_text(texts, dimensionality=None), exact)  # nothing measured faster: unchanged
    small = apply_precision(Embedder.from_pretrained(text=folder), "int8", capability=AVX2)
    info = small.info["precision"]
    assert (info["requested"], info["mode"], info["engine"]) == ("int8", "int8", "openvino")
    assert info["towers"]["text"].startswith("int8 weights (OpenVINO")
    got = small.embed_text(texts)
    assert got.dtype == np.float32 and np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    assert (got * exact).sum(1).min() > 0.99


@needs_openvino
def test_fast_on_avx2_runs_bert_as_an_openvino_fp32_graph_with_the_same_numbers(minilm_dir):
    texts = ["hi", "boundary layer transition on a flat plate " * 10, "x " * 600, ""]
    exact = Embedder.from_pretrained(text=str(minilm_dir)).embed_text(texts)
    fast = apply_precision(Embedder.from_pretrained(text=str(minilm_dir)), "fast", capability=AVX2)
    assert fast.info["precision"]["towers"]["text"].startswith("fp32 graph (OpenVINO")
    got = fast.embed_text(texts)
    assert got.dtype == np.float32 and not np.array_equal(got, exact)  # another engine really ran
    assert np.abs(got - exact).max() < 1e-5 and (got * exact).sum(1).min() > 0.99999


@needs_openvino
@pytest.mark.slow  # ~60 s on 2 busy cores (trace + export of the tiny tower, twice)
def test_openvino_nomic_vision_matches_exact(fixtures_dir, data_dir):
    from multimodal_embed.engines.openvino import compile_tower

    folder = str(fixtures_dir / "vision-v1.5-tiny")
    images = [str(fixtures_dir / "vision-v1.5-tiny" / "synthetic_300x200.png")] + \
        sorted(str(p) for p in (data_dir / "images-odd" / "exif_orientation_jpeg").glob("*.jpg"))[:3]
    exact = Embedder.from_pretrained(vision=folder).embed_images(images)
    fast = apply_precision(Embedder.from_pretrained(vision=folder), "fast", capability=AVX2)
    assert fast.info["precision"]["towers"]["vision"].startswith("fp32 (torch")  # no engine measured faster
    assert np.array_equal(fast.embed_images(images), exact)
    graph = Embedder.from_pretrained(vision=folder)
    graph.vision_encoder.model = compile_tower(graph.vision_encoder.model, "vit", weights="fp32",
                                               image_size=graph.vision_encoder.preprocessor.output_size())
    assert np.abs(graph.embed_images(images) - exact).max() < 1e-5  # the fp32 graph itself is exact
    small = apply_precision(Embedder.from_pretrained(vision=folder), "int8", capability=AVX2)
    assert (small.embed_images(images) * exact).sum(1).min() > 0.99


@needs_openvino
def test_export_is_cached_once_per_model_and_atomic(fixtures_dir):
    from multimodal_embed.engines.openvino import cache_root, export_tower, weights_key

    model = Embedder.from_pretrained(text=str(fixtures_dir / "text-v1.5-tiny")).text_encoder.model
    first = export_tower(model, "nomic")  # int8: the same weights as the test above: read back, not exported again
    stamp = first.stat().st_mtime_ns
    assert first.parent.parent == cache_root() / "openvino"
    assert export_tower(model, "nomic") == first and first.stat().st_mtime_ns == stamp
    assert not [p for p in first.parent.parent.iterdir() if p.name.startswith(".tmp-")]  # no temp leftovers
    key = weights_key(model, "nomic")
    with torch.no_grad():
        model.emb_ln.bias.add_(0.01)  # other weights: another key, so another export
    assert weights_key(model, "nomic") != key and first.parent.name == f"nomic-{key}"
    assert weights_key(model, "nomic", "fp32") != weights_key(model, "nomic")  # another recipe, another export
    with pytest.raises(ValueError, match="weights"):
        export_tower(model, "nomic", weights="int4")


@needs_openvino
def test_cli_fast_flag(fixtures_dir, capsys):
    import json

    from multimodal_embed.cli import build_parser, main

    assert build_parser().parse_args(["embed", "--text", "x"]).fast is False
    assert build_parser().parse_args(["embed", "--text", "x"]).precision == "exact"
    for flags in (["--fast"], ["--precision", "int8"]):
        code = main(["embed", "--model", str(fixtures_dir / "text-v1.5-tiny"), *flags, "--text", "hello", "world"])
        rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
        assert code == 0 and len(rows) == 2
    with pytest.raises(SystemExit):
        build_parser().parse_args(["embed", "--precision", "int4", "--text", "x"])


# -- quality on real weights (small samples; benchmarks/cpu_precision.py prints the full numbers) -----------------
@needs_openvino
@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fast", "int8"])
def test_minilm_retrieval_sample_within_tolerance(minilm_dir, data_dir, precision):
    """The shipped known-item retrieval set (tests/fixtures/retrieval, BEIR format): nDCG@10 within 0.005."""
    from benchmarks.cpu_precision import ndcg_at_10

    root = data_dir / "retrieval"
    docs = [json.loads(line) for line in (root / "corpus.jsonl").read_text().splitlines()]
    queries = [json.loads(line) for line in (root / "queries.jsonl").read_text().splitlines()]
    doc_row = {d["_id"]: i for i, d in enumerate(docs)}
    query_row = {q["_id"]: i for i, q in enumerate(queries)}
    qrels: dict[int, dict[int, int]] = {}
    for line in (root / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        q, d, gain = line.split("\t")
        qrels.setdefault(query_row[q], {})[doc_row[d]] = int(gain)
    texts = [d["text"] for d in docs] + [q["text"] for q in queries]
    exact = Embedder.from_pretrained(text=str(minilm_dir))
    fast = apply_precision(Embedder.from_pretrained(text=str(minilm_dir)), precision, capability=AVX2)
    a, b = exact.embed_text(texts), fast.embed_text(texts)
    # fp32 graphs: >= 0.99999. int8 weights: min cosine 0.998+ on AVX2, 0.9975 on AVX512-VNNI (OpenVINO's int8
    # kernels there; mean 0.9995, nDCG@10 +0.003), so the bound holds on both kinds of CI machine
    assert (a * b).sum(1).min() > (0.997 if precision == "int8" else 0.998)
    nd = len(docs)
    base = ndcg_at_10(a[nd:], a[:nd], qrels)
    assert base > 0.3  # the sample is a real retrieval task
    assert abs(ndcg_at_10(b[nd:], b[:nd], qrels) - base) <= 0.005


@needs_openvino
@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fast", "int8"])
def test_aligned_model_held_out_sample_within_tolerance(data_dir, precision):
    """Zero-shot top-1 on the sample gallery's 31 labelled photos and held-out Tux Paint R@10 keep their values."""
    from benchmarks.aligned_eval import held_out, recall, zero_shot_top1

    tux = held_out(data_dir / "tuxpaint-stamps")
    gallery = json.loads((GALLERY / "gallery.json").read_text())
    paths = [str(GALLERY / name) for name in sorted(gallery)]
    truth = [gallery[name]["label"] for name in sorted(gallery)]
    labels = sorted(set(truth))
    results = {}
    for name in ("exact", precision):
        emb = Embedder.from_pretrained("minilm-efficientnet-lite0")
        if name != "exact":
            apply_precision(emb, precision, capability=AVX2)

        def txt(texts, emb=emb):
            return emb.embed_text(texts, task=emb.query_task, show_progress=False)

        img = emb.embed_images(paths)
        results[name] = (img, zero_shot_top1(img, labels, truth, txt),
                         recall(emb.embed_images([p for p, _ in tux]), [c for _, c in tux], txt)["R@10"])
    (a, top1_a, r10_a), (b, top1_b, r10_b) = results["exact"], results[precision]
    assert (a * b).sum(1).min() > (0.99999 if precision == "fast" else 0.99)  # fast: an fp32 graph
    assert abs(top1_a - top1_b) <= (0 if precision == "fast" else 1 / len(paths)) + 1e-9  # int8: one photo
    assert abs(r10_a - r10_b) <= 0.01
