"""``mmembed map``: its arguments and its command (the map's modules are imported when the command runs)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _model_for(args: argparse.Namespace, source: Any) -> Any:
    """The model of the source's vectors: the one it records (``--model`` must name the same), else ``--model``."""
    from ..embedder import Embedder
    from ..errors import IndexMismatchError

    recorded = source.identity
    if recorded and args.model and args.model != recorded.get("name"):  # as `mmembed search --model`: exit 4
        raise IndexMismatchError(f"--model {args.model}: the vectors were made by {recorded.get('name')}; naming "
                                 f"clusters or placing queries with another model would compare two spaces")
    if recorded:
        kwargs = {"device": args.device} if args.device else {}
        return Embedder.from_identity(recorded, **kwargs)
    if args.model:
        return args.load_model(args.model, args)
    return None


def cmd_map(args: argparse.Namespace) -> int:
    """Build the map; write the HTML (and the Parquet); a summary line to stdout; exit 1 when images were unreadable."""
    from ..imagefiles import printable
    from .build import build_map
    from .export import write_map_parquet
    from .html import write_html
    from .sources import load_source, source_kind

    out = Path(args.output)
    show = False if args.quiet else None
    labels = args.read_labels(args) if (args.labels or args.labels_file) else None
    queries = [q.strip() for q in args.query or [] if q.strip()]
    if args.queries_file:
        queries += [line.strip() for line in Path(args.queries_file).read_text(encoding="utf-8").splitlines()
                    if line.strip()]
    queries = list(dict.fromkeys(queries))
    embedder = args.load_model(args.model, args) if source_kind(args.source) == "texts" else None
    source = load_source(args.source, embedder, show_progress=show)
    if embedder is None:
        embedder = _model_for(args, source)
    result = build_map(source, embedder, labels=labels, vocabulary=None if args.vocabulary == "none" else "imagenet",
                       templates=args.templates, queries=queries, seed=args.seed, layout=args.layout,
                       min_cluster_size=args.min_cluster_size, min_probability=args.min_probability,
                       max_points=args.max_points, thumbnails=not args.no_thumbnails, thumb_side=args.thumb_size,
                       thumb_budget_bytes=int(args.thumb_budget_mb * 1_000_000), cache_dir=args.cache_dir,
                       show_progress=show)
    write_html(result, out)
    written = [str(out)]
    if args.parquet:
        written += [str(p) for p in write_map_parquet(result, args.parquet)]
    failed = [(result.items[i], e) for i, e in enumerate(result.errors) if e is not None]
    for item, reason in failed:
        print(f"mmembed: unreadable (a grey point): {printable(item)}: {printable(reason)}", file=sys.stderr)
    named = sum(cl.name != "unnamed" for cl in result.clusters)
    print(f"{len(result.items)} points ({result.layout_method}), {len(result.clusters)} clusters ({named} named), "
          f"{len(result.queries)} queries -> {', '.join(printable(w) for w in written)}")
    if result.layout_method != "umap" and args.layout != "pca":
        print(f"mmembed: layout by PCA: {result.layout_reason}", file=sys.stderr)
    return 1 if failed else 0


def _suffix(*allowed: str) -> Callable[[str], str]:
    """An argparse type: a file name ending in one of ``allowed`` (else a usage error, exit 2, before any work)."""
    def check(text: str) -> str:
        if not text.lower().endswith(allowed):
            raise argparse.ArgumentTypeError(f"{text!r}: must end in {' or '.join(allowed)}")
        return text

    return check


def _megabytes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def add_map_command(sub: Any, add: Callable[..., argparse.ArgumentParser], positive_int: Callable[[str], int], *,
                    load_model: Callable[[str | None, argparse.Namespace], Any],
                    read_labels: Callable[[argparse.Namespace], list[str]]) -> argparse.ArgumentParser:
    """Register ``mmembed map`` with ``build_parser``'s ``add`` helper, its positive-integer type, and the CLI's
    model loader (``--model``, ``--device``, ``--precision``) and ``--labels``/``--labels-file`` reader (passed in:
    this module does not import the CLI's)."""
    p = add("map", "a 2-D map of an index, a vectors file or a text collection: clustered, clusters named offline, "
                   "one self-contained HTML file (+ Parquet for embedding-atlas)", cmd_map)
    p.add_argument("source", help="an index (.mmindex), a vectors file (.parquet, .jsonl, .npy from `mmembed export` "
                                  "or `mmembed embed -o`), or texts: a BEIR folder, a .jsonl with 'text', a .txt")
    p.add_argument("-o", "--output", required=True, type=_suffix(".html", ".htm"), help="the map page, NAME.html")
    p.add_argument("--parquet", type=_suffix(".parquet"), help="also NAME.parquet (x, y, cluster, label, path, thumbnail...) and "
                                     "NAME.labels.parquet for `embedding-atlas NAME.parquet --x x --y y --image "
                                     "thumbnail --text label --labels NAME.labels.parquet`")
    p.add_argument("--labels", help="comma-separated names for clusters (images: added to the vocabulary; texts: "
                                    "clusters take the nearest; default for texts: c-TF-IDF terms)")
    p.add_argument("--labels-file", help="one label per line")
    p.add_argument("--vocabulary", choices=["imagenet", "none"], default="imagenet",
                   help="images: name clusters by zero-shot over the 1,000 ImageNet class names plus --labels "
                        "(default), or --labels only (none)")
    p.add_argument("--templates", default="simple", help="zero-shot prompts: simple (default: 4 a label, fast), "
                                                         "openai-imagenet (80), none")
    p.add_argument("--min-probability", type=float, help="a cluster is 'unnamed' when its best label's mean "
                                                         "probability (texts with --labels: cosine) is below this "
                                                         "(default 0.15; 0.25 cosine)")
    p.add_argument("--query", action="append", help="a text to place on the map (repeatable); the page's search box "
                                                    "offers these")
    p.add_argument("--queries-file", help="one query per line")
    p.add_argument("--seed", type=int, default=0, help="the layout's seed: the same seed, the same map (default 0)")
    p.add_argument("--layout", choices=["auto", "umap", "pca"], default="auto",
                   help="auto: UMAP when umap-learn is installed (the [map] extra), else PCA, with the reason")
    p.add_argument("--min-cluster-size", type=positive_int, help="HDBSCAN's (default: 0.5%% of the points, >= 5)")
    p.add_argument("--max-points", type=positive_int, default=200_000,
                   help="map a seeded sample of this many when there are more (default 200000)")
    p.add_argument("--thumb-size", type=positive_int, default=64, help="thumbnail side in pixels (default 64)")
    p.add_argument("--thumb-budget-mb", type=_megabytes, default=15.0,
                   help="total JPEG thumbnails in the page, MB (default 15; points past it show no thumbnail)")
    p.add_argument("--no-thumbnails", action="store_true")
    p.add_argument("--cache-dir", help="cache the vocabulary's label embeddings here")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(load_model=load_model, read_labels=read_labels)
    return p
