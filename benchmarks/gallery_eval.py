"""Quality of a model on the sample gallery shipped in the package (what a new user sees first).

    python benchmarks/gallery_eval.py [--model minilm-efficientnet-lite0] [--json out.json]

- Text-to-image: each photo's query from demo_assets/gallery.json searches all photos; R@1 / R@5 (one relevant
  photo per query).
- Zero-shot: top-1 over the gallery's labels ("simple" templates).
Re-runnable after the built-in model is retrained; prints the numbers, the misses and the CPU (quality only:
no timing here).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from multimodal_embed.precision import cpu_capability


def scores(emb, images: np.ndarray) -> dict:
    """Gallery quality of the image vectors ``images`` (one per gallery photo, in order) with ``emb``'s text side."""
    from multimodal_embed import ZeroShotClassifier
    from multimodal_embed.quickstart import load_gallery

    items = load_gallery()
    queries = emb.embed_text([it.query for it in items], task=emb.query_task, show_progress=False)
    ranks = np.argsort(-(queries @ images.T), axis=1)
    rank_of_own = [int(np.where(ranks[i] == i)[0][0]) for i in range(len(items))]
    labels = sorted({it.label for it in items})
    clf = ZeroShotClassifier(emb, labels=labels, templates="simple")
    predicted = [labels[j] for j in np.argmax(clf.cosine(images), axis=1)]
    return {
        "images": len(items),
        "text_to_image_R@1": float(np.mean([r < 1 for r in rank_of_own])),
        "text_to_image_R@5": float(np.mean([r < 5 for r in rank_of_own])),
        "zero_shot_top1": float(np.mean([p == it.label for p, it in zip(predicted, items)])),
        "misses_text_to_image": {it.query: items[ranks[i][0]].path.name
                                 for i, it in enumerate(items) if rank_of_own[i] > 0},
        "misses_zero_shot": {it.path.name: p for p, it in zip(predicted, items) if p != it.label},
    }


def evaluate(model: str) -> dict:
    import torch

    from multimodal_embed import Embedder
    from multimodal_embed.quickstart import load_gallery

    emb = Embedder.from_pretrained(model)
    return {
        "model": model, **scores(emb, emb.embed_images([str(it.path) for it in load_gallery()])),
        "cpu": cpu_capability().model, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm-efficientnet-lite0")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args()
    res = evaluate(args.model)
    print(f"{res['model']} on the {res['images']}-photo sample gallery")
    print(f"  text-to-image R@1 {res['text_to_image_R@1']:.3f}  R@5 {res['text_to_image_R@5']:.3f}")
    print(f"  zero-shot top-1   {res['zero_shot_top1']:.3f}  over {res['images']} labels")
    for q, got in res["misses_text_to_image"].items():
        print(f"  search miss: {q!r} -> {got}")
    for f, got in res["misses_zero_shot"].items():
        print(f"  zero-shot miss: {f} -> {got!r}")
    print(f"  CPU: {res['cpu']} ({res['cpu_capability']}, {res['threads']} threads), torch {res['torch']}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
