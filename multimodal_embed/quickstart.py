"""Text-to-image search over the sample gallery shipped in the package, with the built-in offline model.

``python -m multimodal_embed.quickstart "a cup of coffee" [-k 5] [--model NAME]`` prints the best matches
(score and file). The model is the toolkit's default (:func:`multimodal_embed.defaults.choose_model`): offline,
that is the built-in ``minilm-efficientnet-lite0``, whose weights ship with the package; the gallery is
``demo_assets/`` (31 permissively licensed photos, see its LICENSE.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .defaults import BUILTIN_MODEL

GALLERY_DIR = Path(__file__).resolve().parent / "demo_assets"


@dataclass(frozen=True)
class GalleryItem:
    """One photo of the sample gallery: its path, its label (zero-shot class) and a text query describing it."""

    path: Path
    label: str
    query: str


def load_gallery(folder: str | Path = GALLERY_DIR) -> list[GalleryItem]:
    """The gallery's photos in file-name order, from ``gallery.json`` beside them."""
    folder = Path(folder)
    entries = json.loads((folder / "gallery.json").read_text(encoding="utf-8"))
    return [GalleryItem(folder / name, e["label"], e["query"]) for name, e in sorted(entries.items())]


def search_gallery(embedder: Any, query: str, k: int = 5,
                   items: list[GalleryItem] | None = None) -> list[tuple[float, Path]]:
    """The ``k`` gallery photos closest to ``query`` as (cosine, path), best first."""
    items = items if items is not None else load_gallery()
    images = embedder.embed_images([str(it.path) for it in items])
    q = embedder.embed_text([query], task=embedder.query_task)
    scores = (images @ q[0]).astype(float)
    order = sorted(range(len(items)), key=lambda i: -scores[i])[:k]
    return [(float(scores[i]), items[i].path) for i in order]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m multimodal_embed.quickstart",
                                     description="search the sample gallery shipped in the package")
    parser.add_argument("query", nargs="?", default="a cup of coffee")
    parser.add_argument("-k", type=int, default=5, help="how many matches to print (default 5)")
    parser.add_argument("--model", help="default: $MMEMBED_MODEL, the config file's model, nomic-embed-v1.5 when "
                                        f"cached or reachable, else {BUILTIN_MODEL} (offline, built in)")
    args = parser.parse_args(argv)

    from .defaults import choose_model
    from .embedder import Embedder
    from .errors import MultimodalEmbedError

    try:
        choice = choose_model(args.model)
        if choice.notice:
            print(f"note: {choice.notice}", file=sys.stderr)
        embedder = Embedder.from_pretrained(choice.name)
        hits = search_gallery(embedder, args.query, args.k)
    except MultimodalEmbedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.query!r} over {len(load_gallery())} sample photos ({choice.name}):")
    for rank, (score, path) in enumerate(hits, 1):
        print(f"{rank:>2}. {score:.3f}  {path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
