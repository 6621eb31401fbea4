"""Zero-shot classifier build: one batched pass over labels x templates vs a per-class loop (open_clip style).

    python benchmarks/zeroshot_build.py [--labels 1000] [--full-size-labels 16]

(1) the tiny nomic fixtures (../shared/fixtures/nomic), 1000 labels x 80 OpenAI templates = 80,000 prompts;
(2) the full-size nomic-embed-text-v1.5 architecture with random weights on fewer labels (CPU cost).
Both methods produce the same class embeddings (max |diff| printed). Then predicting: images/s of the matrix
product alone for 1000 classes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FIXTURES = ROOT.parent / "shared" / "fixtures" / "nomic"


def per_class_loop(emb, labels, templates):
    rows = []
    for lab in labels:  # one embed call per class, as open_clip's build_zero_shot_classifier does per batch
        v = emb.embed_text([t.format(lab) for t in templates], task=emb.query_task, show_progress=False).mean(0)
        rows.append(v / np.linalg.norm(v))
    return np.stack(rows)


def run(emb, labels, title):
    from multimodal_embed import zeroshot as zs

    templates = zs.NAMED_TEMPLATES["openai-imagenet"]
    zs._MEMORY_CACHE.clear()
    t0 = time.perf_counter()
    clf = zs.ZeroShotClassifier(emb, labels, templates="openai-imagenet", show_progress=False)
    ta = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = per_class_loop(emb, labels, templates)
    tb = time.perf_counter() - t0
    n = len(labels) * len(templates)
    print(f"{title}: {len(labels)} labels x {len(templates)} templates = {n} prompts")
    print(f"  (a) one batched pass  {ta:8.2f} s  {n / ta:9.0f} prompts/s")
    print(f"  (b) per-class loop    {tb:8.2f} s  {n / tb:9.0f} prompts/s")
    print(f"  a/b = {tb / ta:.2f}x   max |a - b| = {np.abs(clf.class_embeddings - ref).max():.1e}")
    return clf


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--labels", type=int, default=1000)
    ap.add_argument("--full-size-labels", type=int, default=16)
    args = ap.parse_args()
    from multimodal_embed import Embedder
    from multimodal_embed.models.nomic_bert import NomicBertConfig, NomicBertModel
    from multimodal_embed.text import NomicTextEncoder

    words = [f"class {i} {w}" for i, w in enumerate(("cat dog car ship bird frog horse truck deer plane " * 100).split())]
    tiny = Embedder.from_pretrained(text=str(FIXTURES / "text-v1.5-tiny"), vision=str(FIXTURES / "vision-v1.5-tiny"))
    clf = run(tiny, words[: args.labels], "tiny fixture")
    img = np.random.default_rng(0).standard_normal((4096, tiny.dim)).astype(np.float32)
    t0 = time.perf_counter()
    clf.probabilities_from_cosine(clf.cosine(img))
    dt = time.perf_counter() - t0
    print(f"  scoring 4096 image embeddings against {len(clf.labels)} classes: {dt * 1000:.1f} ms "
          f"({4096 / dt:,.0f} images/s, one matrix product)")

    if args.full_size_labels:
        torch.manual_seed(0)
        cfg = NomicBertConfig.from_hf_dict(json.loads((FIXTURES / "config.nomic-embed-text-v1.5.json")
                                                      .read_text()))
        model = NomicBertModel(cfg).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, 0.02)
        enc = NomicTextEncoder(model, tiny.text_encoder.tokenizer, matryoshka=True)
        full = Embedder(enc, tiny.vision_encoder, info={"text": {"name": "full-size-random"}})
        full.vision_encoder.dim = enc.dim  # the classifier only needs the text tower here
        run(full, words[: args.full_size_labels], "full-size nomic-embed-text-v1.5 (random weights)")


if __name__ == "__main__":
    main()
