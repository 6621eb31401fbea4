"""``mmembed eval``: its arguments and its command (heavy modules are imported when the command runs)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

TASK_CHOICES = ("zeroshot", "image-text", "text-retrieval")


def _dims(text: str) -> list[int]:
    try:
        dims = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give sizes like 768,256,64") from None
    if not dims or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"{text!r}: sizes must be positive")
    return dims


def cmd_eval(args: argparse.Namespace) -> int:
    """Run the evaluation; the tables to stdout, failures to stderr; exit 1 when some items were left out."""
    from ..defaults import choose_model
    from ..imagefiles import check_output_path, printable
    from .runner import check_plot_output, evaluate

    # every output is checked before any data set is read or model loaded: a bad path fails in a second, not after
    # the evaluation
    if args.json and args.json != "-":
        check_output_path(args.json)
    if args.plot:
        check_plot_output(args.plot)
    if args.model:
        models = args.model
    else:  # the toolkit's default rule, with its notice when the built-in model stands in
        choice = choose_model(None)
        if choice.notice:
            print(f"mmembed: {choice.notice}", file=sys.stderr)
        models = [choice.name]
    dims = sorted({d for group in args.dim or [] for d in group}, reverse=True) or None
    report = evaluate(args.paths, models, dims=dims, task=args.task, templates=args.templates,
                      cache_dir=None if args.no_cache else (args.cache_dir or "default"),
                      batch_size=args.batch_size, show_progress=False if args.quiet else None, split=args.split,
                      limit_per_class=args.limit_per_class, image_root=args.image_root, device=args.device,
                      precision="fast" if args.fast else args.precision)
    sys.stdout.write(report.markdown())
    sys.stdout.flush()
    if args.json:
        _write_json(args.json, report.to_dict())
    if args.plot:
        report.plot(args.plot)
    for item, reason in report.failures:
        print(f"mmembed: failed: {printable(item)}: {printable(reason)}", file=sys.stderr)
    return 1 if report.failures else 0


def _write_json(path: str, data: dict[str, Any]) -> None:
    """``data`` as JSON to ``path`` (``-``: stdout), atomically (:func:`~multimodal_embed.imagefiles.write_atomic`:
    a symbolic link, folder or device at ``path`` is refused, never replaced)."""
    from ..imagefiles import write_atomic

    text = json.dumps(data, indent=2, default=str) + "\n"
    if path == "-":
        sys.stdout.write(text)
        return
    write_atomic(path, lambda fh: fh.write(text.encode("utf-8")))


def add_eval_command(sub: Any, add: Callable[..., argparse.ArgumentParser],
                     positive_int: Callable[[str], int]) -> argparse.ArgumentParser:
    """Register ``mmembed eval`` with ``build_parser``'s ``add`` helper and its positive-integer type."""
    p = add("eval", "measure models on local data: zero-shot (ImageFolder, CSV/JSONL of path,label), image-text "
                    "retrieval (COCO JSON, CSV/JSONL of path,caption, captioned folders), both on a gallery folder "
                    "(gallery.json: a label and a query per photo) and text retrieval (BEIR); Markdown tables to "
                    "stdout", cmd_eval, model=False)
    p.add_argument("paths", nargs="+", help="data sets, recognised by their layout (--task forces one)")
    p.add_argument("--model", action="append", help="a model to evaluate (repeat for several; default: "
                                                    "$MMEMBED_MODEL, the config file, nomic-embed-v1.5 where "
                                                    "available, else the built-in model)")
    p.add_argument("--dim", type=_dims, action="append", help="Matryoshka sizes, e.g. 768,256,64 (models that are "
                                                              "not Matryoshka are evaluated at their full size)")
    p.add_argument("--task", choices=TASK_CHOICES, help="read every path as this task")
    p.add_argument("--templates", default="openai-imagenet", help="zero-shot label templates: openai-imagenet "
                                                                  "(default), simple, none")
    p.add_argument("--split", default="test", help="BEIR qrels split (default test)")
    p.add_argument("--limit-per-class", type=positive_int, help="zero-shot: the first N images of each class")
    p.add_argument("--image-root", help="COCO JSON: folder the file_name paths are relative to (default: the "
                                        "JSON's folder)")
    p.add_argument("--json", help="write every number and the run's settings here (- for stdout)")
    p.add_argument("--plot", help="write a bar chart here (.png, .svg, .pdf): one panel per metric")
    p.add_argument("--cache-dir", help="embedding cache (default $MMEMBED_CACHE/eval or ~/.cache/multimodal_embed/"
                                       "eval)")
    p.add_argument("--no-cache", action="store_true", help="embed everything, write no cache")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--device", help="cpu, cuda, mps (default: the best available)")
    p.add_argument("--fast", action="store_true", help="same as --precision fast")
    p.add_argument("--precision", choices=["exact", "fast", "int8"], default="exact")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return p
