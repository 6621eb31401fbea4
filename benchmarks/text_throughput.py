"""Text throughput: embed_text vs the model card's Transformers recipe vs length-sorted batches of 32.

The full-size nomic-embed-text-v1.5 architecture with random weights (no download), texts from the Cranfield
collection in ../shared/data/ir (abstracts as documents, queries as queries), all methods in this process on
the same threads. (b) and (c) run transformers' native NomicBertModel with the same weights.

    python benchmarks/text_throughput.py [--docs 128] [--queries 128] [--long]

``--long`` also times one 8192-token document with SDPA vs eager attention, each in a fresh subprocess
(peak RSS from getrusage).
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=128)
    ap.add_argument("--queries", type=int, default=128)
    ap.add_argument("--long", action="store_true")
    ap.add_argument("--long-child", choices=["sdpa", "eager"])
    args = ap.parse_args()
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
