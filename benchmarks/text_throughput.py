"""Text throughput: embed_text vs the model card's Transformers recipe vs length-sorted batches of 32.

The full-size nomic-embed-text-v1.5 architecture with random weights (no download), texts from the Cranfield
collection in ../shared/data/ir (abstracts as documents, queries as queries), all methods in this process on
the same threads. (b) and (c) run transformers' native NomicBertModel with the same weights.

    python benchmarks/text_throughput.py [--docs 128] [--queries 128] [--long]
    python benchmarks/text_throughput.py --v2-moe [--layers 12] [--repeats 3]

``--long`` also times one 8192-token document with SDPA vs eager attention, each in a fresh subprocess
(peak RSS from getrusage).

``--v2-moe``: nomic-embed-text-v2-moe at full width (768, 8 experts of 3072, top-2, MoE on every second block;
``--layers`` fewer than 12 keeps the width and the dense/MoE alternation) with random weights, texts tokenised by
the tiny fixture's XLM-R-format tokenizer. Three models in this process on the same threads, interleaved
``--repeats`` times (best time kept): (a) ours, each expert on its routed tokens; (b) the same weights computed
the naive way (every expert on every token, masked: ``NomicMoELayer.forward_dense``); (c) a dense model with the
same *active* parameters (each MoE FFN replaced by one GELU MLP of 2 x 3072). Asks: b/a >= 2, a/c <= 1.3.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
FIXTURES = SHARED / "fixtures" / "nomic"


def cranfield(n_docs: int, n_queries: int) -> tuple[list[str], list[str]]:
    folder = SHARED / "data" / "ir" / "cranfield"

    def records(path: Path) -> list[str]:
        out = []
        for rec in re.split(r"^\.I ", path.read_text(), flags=re.MULTILINE)[1:]:
            body = rec.split("\n.W\n", 1)[-1]
            out.append(" ".join(body.split()))
        return out

    return records(folder / "cran.all.1400")[:n_docs], records(folder / "cran.qry")[:n_queries]


def build(seed: int = 0):
    from transformers import AutoTokenizer
    from transformers import NomicBertConfig as NativeConfig
    from transformers import NomicBertModel as NativeModel

    from multimodal_embed.models.nomic_bert import NomicBertConfig, NomicBertModel
    from multimodal_embed.text import NomicTextEncoder

    raw = json.loads((FIXTURES / "config.nomic-embed-text-v1.5.json").read_text())
    cfg = NomicBertConfig.from_hf_dict(raw)
    torch.manual_seed(seed)
    ours = NomicBertModel(cfg).eval()
    for name, p in ours.named_parameters():
        with torch.no_grad():
            if "norm" in name or "ln" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p) if name.endswith("weight") else 0.05 * torch.randn_like(p))
            else:
                p.normal_(0, 0.02)
    tok = AutoTokenizer.from_pretrained(str(FIXTURES / "text-v1.5-tiny"))
    tok.model_max_length = 8192
    encoder = NomicTextEncoder(ours, tok, matryoshka=True)
    native_cfg = NativeConfig(rope_parameters={"rope_type": "default", "rope_theta": 1000.0})
    native_cfg._attn_implementation = "sdpa"
    native = NativeModel(native_cfg).eval()
    sys.path.insert(0, str(ROOT))
    from tests.models.test_nomic_bert import _to_native

    native.load_state_dict(_to_native(ours.state_dict()), strict=True)
    return encoder, native, tok


def card_recipe(native, tok, texts: list[str], order: list[int]) -> torch.Tensor:
    """The model card: tokenizer(padding=True, truncation=True), model, mean pooling, LN, L2; batches of 32."""
    out = torch.empty(len(texts), native.config.hidden_size)
    with torch.inference_mode():
        for start in range(0, len(order), 32):
            idx = order[start:start + 32]
            enc = tok([texts[i] for i in idx], padding=True, truncation=True, max_length=8192, return_tensors="pt")
            h = native(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).float()
            pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            out[idx] = F.normalize(F.layer_norm(pooled, (pooled.shape[1],)), dim=-1)
    return out


def timed(fn):
    t0 = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t0


def long_doc(mode: str) -> None:
    import resource

    encoder, native, _tok = build()
    ids = torch.randint(1000, 30000, (1, 8192))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with torch.inference_mode():
        if mode == "sdpa":
            encoder.model(ids)
        else:
            native.set_attn_implementation("eager")
            native(input_ids=ids)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"mode": mode, "wall_s": round(wall, 2), "peak_extra_mib": round((peak - base) / 1024)}))


def build_v2_moe(layers: int, seed: int = 0):
    """(a) the v2-moe encoder, (b) its naive dense-MoE twin (same weights), (c) a dense model with the same active
    parameters; the tokenizer."""
    import copy
    import dataclasses

    from transformers import AutoTokenizer

    from multimodal_embed.models.nomic_bert import NomicBertConfig, NomicBertGeluMLP, NomicBertModel
    from multimodal_embed.text import NomicTextEncoder

    raw = json.loads((FIXTURES / "config.nomic-embed-text-v2-moe.json").read_text())
    cfg = dataclasses.replace(NomicBertConfig.from_hf_dict(raw), num_hidden_layers=layers)
    torch.manual_seed(seed)
    model = NomicBertModel(cfg).eval()
    with torch.no_grad():  # the fixture's rule: LN 1+0.1N, biases 0.05N, router 0.2N, the rest 0.02N
        for name, p in model.named_parameters():
            if "norm" in name or "ln" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p) if name.endswith("weight") else 0.05 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.normal_(0, 0.05)
            elif "router" in name:
                p.normal_(0, 0.2)
            else:
                p.normal_(0, 0.02)
    tok = AutoTokenizer.from_pretrained(str(FIXTURES / "text-v2-moe-tiny"))
    tok.model_max_length = 1 << 30
    grouped = NomicTextEncoder(model, tok, matryoshka=True, max_length=512)
    naive_model = copy.deepcopy(model)
    dense_model = copy.deepcopy(model)
    wide = dataclasses.replace(cfg, intermediate_size=cfg.moe_top_k * cfg.intermediate_size)
    for i, (nb, db) in enumerate(zip(naive_model.encoder.layers, dense_model.encoder.layers)):
        if cfg.is_moe_layer(i):
            nb.mlp.forward = nb.mlp.forward_dense  # every expert on every token, masked
            db.mlp = NomicBertGeluMLP(wide).eval()  # the active parameters of 2 experts, as one dense MLP
            with torch.no_grad():
                for p in db.mlp.parameters():
                    p.normal_(0, 0.02)
    naive = NomicTextEncoder(naive_model, tok, matryoshka=True, max_length=512)
    dense = NomicTextEncoder(dense_model, tok, matryoshka=True, max_length=512)
    return grouped, naive, dense, tok, cfg


def main_v2_moe(args: argparse.Namespace) -> None:
    import os

    from multimodal_embed.precision import cpu_capability

    docs, queries = cranfield(args.docs, args.queries)
    texts = ["search_document: " + d for d in docs] + ["search_query: " + q for q in queries]
    grouped, naive, dense, tok, cfg = build_v2_moe(args.layers)
    lengths = [min(len(x), 512) for x in tok(texts)["input_ids"]]
    n_tokens = sum(lengths)
    cap = cpu_capability()
    print(f"machine: {cap.model}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"get_cpu_capability()={torch.backends.cpu.get_cpu_capability()}, threads {torch.get_num_threads()}; "
          f"v2-moe width {cfg.hidden_size}, {cfg.num_hidden_layers} layers "
          f"({sum(map(cfg.is_moe_layer, range(cfg.num_hidden_layers)))} MoE, {cfg.num_experts} experts top-"
          f"{cfg.moe_top_k}); {len(texts)} texts, {n_tokens} tokens (max {max(lengths)})")
    runs = {"a grouped MoE (ours)": grouped, "b naive dense MoE": naive, "c dense, same active": dense}
    for enc in runs.values():
        enc.encode(texts[:4], task=None)  # warm-up
    best = {k: float("inf") for k in runs}
    out = {}
    for _ in range(args.repeats):
        for name, enc in runs.items():
            out[name], t = timed(lambda enc=enc: enc.encode(texts, task=None, show_progress=False))
            best[name] = min(best[name], t)
    for name, t in best.items():
        print(f"{name:24s} {t:7.2f} s  {len(texts) / t:7.2f} texts/s  {n_tokens / t:8.1f} tokens/s")
    ta, tb, tc = best.values()
    a, b = out["a grouped MoE (ours)"], out["b naive dense MoE"]
    print(f"b/a = {tb / ta:.2f}x (ask >= 2)   a/c = {ta / tc:.2f}x (ask <= 1.3)   "
          f"max |a - b| = {(a - b).abs().max().item():.2e}")

    # the models alone (no tokenising, batching or pooling): one packed batch of 8 x 256 random tokens
    ids = torch.randint(4, 999, (2048,), generator=torch.Generator().manual_seed(0))
    cu = torch.arange(0, 2049, 256)
    fwd = {k: float("inf") for k in runs}
    with torch.inference_mode():
        for _ in range(args.repeats):
            for name, enc in runs.items():
                _, t = timed(lambda enc=enc: enc.model.forward_packed(ids, cu))
                fwd[name] = min(fwd[name], t)
    for name, t in fwd.items():
        print(f"forward {name:24s} {t:6.2f} s  {2048 / t:8.1f} tokens/s")
    fa, fb, fc = fwd.values()
    print(f"forward only: b/a = {fb / fa:.2f}x   a/c = {fa / fc:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=128)
    ap.add_argument("--queries", type=int, default=128)
    ap.add_argument("--long", action="store_true")
    ap.add_argument("--long-child", choices=["sdpa", "eager"])
    ap.add_argument("--v2-moe", action="store_true", help="time nomic-embed-text-v2-moe (see the docstring)")
    ap.add_argument("--layers", type=int, default=12, help="--v2-moe: blocks (full width either way)")
    ap.add_argument("--repeats", type=int, default=3, help="--v2-moe: interleaved rounds, best time kept")
    args = ap.parse_args()
    if args.v2_moe:
        main_v2_moe(args)
        return
    if args.long_child:
        long_doc(args.long_child)
        return

    docs, queries = cranfield(args.docs, args.queries)
    texts = ["search_document: " + d for d in docs] + ["search_query: " + q for q in queries]
    encoder, native, tok = build()
    n_tokens = sum(len(x) for x in tok(texts)["input_ids"])
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}; {len(texts)} texts, {n_tokens} real tokens")

    card_recipe(native, tok, texts[:4], list(range(4)))  # warm-up
    encoder.encode(texts[:4], task=None)
    sorted_order = sorted(range(len(texts)), key=lambda i: -len(tok(texts[i])["input_ids"]))
    a, ta = timed(lambda: encoder.encode(texts, task=None, show_progress=False))
    b, tb = timed(lambda: card_recipe(native, tok, texts, list(range(len(texts)))))
    c, tc = timed(lambda: card_recipe(native, tok, texts, sorted_order))
    for name, t in (("a embed_text", ta), ("b card recipe", tb), ("c sorted batches of 32", tc)):
        print(f"{name:24s} {t:7.2f} s  {len(texts) / t:7.1f} texts/s  {n_tokens / t:8.1f} tokens/s")
    print(f"a/b = {tb / ta:.2f}x   a/c = {tc / ta:.2f}x")
    print(f"max |a - b| = {(a - b).abs().max().item():.2e}   max |c - b| = {(c - b).abs().max().item():.2e}")

    if args.long:
        for mode in ("sdpa", "eager"):
            out = subprocess.run([sys.executable, __file__, "--long-child", mode], capture_output=True, text=True,
                                 check=False)
            print("8192-token document:", out.stdout.strip() or out.stderr[-500:])


if __name__ == "__main__":
    main()
