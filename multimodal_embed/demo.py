"""The Gradio demo: Search, Zero-shot and Compare tabs over one model and one image index.

``mmembed demo [--index PATH | --images DIR] [--model NAME]`` or ``python demos/app.py``. With no model it tries
nomic-embed-v1.5 and falls back, with a visible notice, to the offline aligned model. With no index or folder
it indexes the small sample gallery shipped in the package. Binds 127.0.0.1; serves only the indexed images
under the folders given on the command line; text queries are only text; uploads are capped; requests are
queued. See SECURITY.md.
"""

from __future__ import annotations

import hashlib
import html
import logging
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InvalidInputError, MultimodalEmbedError

logger = logging.getLogger(__name__)

SAMPLE_DIR = Path(__file__).resolve().parent / "demo_assets"
MAX_UPLOAD = "10mb"
TEMPLATE_SETS = ["simple", "openai-imagenet", "none"]
DISPLAY_MIN_SIDE = 192  # smaller images (e.g. 32x32 CIFAR) are upscaled for display only
GENERIC_LABELS = ["cat", "dog", "car", "person", "landscape"]
MAX_DEFAULT_LABELS = 20
# Per-request caps, checked before any work: a request's cost (an N x N matrix and table in Compare, N labels x
# templates in Zero-shot) stays bounded by them whatever a client sends (SECURITY.md).
MAX_COMPARE_TEXTS = 32
MAX_COMPARE_IMAGES = 16
MAX_LABELS = 100
MAX_TEXT_CHARS = 20_000  # a search query, the Compare texts, the label list


def load_model(name: str | None) -> tuple[Any, str | None]:
    """The requested model, else the toolkit's default (:func:`multimodal_embed.defaults.choose_model`);
    returns (embedder, notice), the notice (Markdown) saying when the built-in model stands in."""
    from .defaults import choose_model
    from .embedder import Embedder

    choice = choose_model(name)
    if choice.notice:
        logger.warning("%s", choice.notice)
        return Embedder.from_pretrained(choice.name), f"**Notice:** {choice.notice}."
    return Embedder.from_pretrained(choice.name), None


def demo_cache_dir() -> Path:
    """The private per-user folder for the demo's indexes: ``$MMEMBED_DEMO_DIR/mmembed-demo``, else
    ``$XDG_CACHE_HOME/mmembed-demo`` or ``~/.cache/mmembed-demo``. Created with mode 0700; refused (with
    :class:`MultimodalEmbedError`) when it is a link, not owned by this user, or open to others, so no other
    user can plant or swap an index there."""
    base = os.environ.get("MMEMBED_DEMO_DIR") or os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    cache = Path(base).expanduser() / "mmembed-demo"
    cache.parent.mkdir(parents=True, exist_ok=True)
    try:
        cache.mkdir(mode=0o700)
    except FileExistsError:
        pass
    _check_private(cache, folder=True)
    return cache


def _check_private(path: Path, *, folder: bool) -> None:
    st = os.lstat(path)
    kind_ok = stat.S_ISDIR(st.st_mode) if folder else stat.S_ISREG(st.st_mode)
    uid = os.getuid() if hasattr(os, "getuid") else st.st_uid
    if not kind_ok or st.st_uid != uid or st.st_mode & (0o077 if folder else 0o022):
        raise MultimodalEmbedError(
            f"refusing the demo cache {path}: it must be a {'folder' if folder else 'file'} owned by you and not "
            f"{'open to' if folder else 'writable by'} other users (not a link). Remove it or set MMEMBED_DEMO_DIR "
            f"to a private folder.")


def open_index(embedder: Any, index: str | None, images: str | None) -> Any:
    """The index the user named, or one for ``images`` (default: the sample gallery) kept in
    :func:`demo_cache_dir` and updated incrementally."""
    from .index import ImageIndex

    if index:
        return ImageIndex.open(index, None)
    folder = Path(images).expanduser() if images else SAMPLE_DIR
    if not folder.is_dir():
        raise MultimodalEmbedError(f"--images {images}: not a folder")
    cache = demo_cache_dir()
    key = hashlib.sha256(f"{folder.resolve()}|{embedder.identity()}".encode()).hexdigest()[:16]
    path = cache / f"{key}.mmindex"
    if path.exists() or path.is_symlink():
        _check_private(path, folder=False)
    idx = ImageIndex.create(path, embedder, exist_ok=True)
    logger.info("indexing %s (cached in %s)", folder, cache)
    report = idx.add_folder(folder, show_progress=True)  # a tqdm bar on the console
    logger.info("%s: %s; %d images", folder, report, len(idx))
    return idx


def served_files(index: Any, trusted_roots: list[str]) -> list[str]:
    """The files the demo may serve: indexed images (status ok) that lie in a folder the user gave on the
    command line (or the sample gallery) and are regular files with an image extension. Nothing else under
    those folders (``.env``, notes) is reachable."""
    from .imagefiles import inside, is_image_name

    roots = [os.path.realpath(r) for r in trusted_roots]
    _, paths, _ = index.vectors()
    out = []
    for p in paths:
        real = os.path.realpath(p)
        if is_image_name(real) and any(inside(real, r) for r in roots) and os.path.isfile(real):
            out.append(p)
    return out


def parse_auth(auth: str | None) -> tuple[str, str] | None:
    """``user:password`` (from ``--auth`` or ``$MMEMBED_DEMO_AUTH``) as Gradio's auth pair."""
    auth = auth or os.environ.get("MMEMBED_DEMO_AUTH")
    if not auth:
        return None
    user, sep, password = auth.partition(":")
    if not sep or not user or not password:
        raise MultimodalEmbedError("--auth / MMEMBED_DEMO_AUTH must be user:password")
    return user, password


def is_loopback(host: str) -> bool:
    import ipaddress

    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _heatmap(rows: list[str], cols: list[str], sims: np.ndarray) -> str:
    """An HTML table coloured by similarity (no plotting dependency)."""
    def cell(v: float) -> str:
        t = max(0.0, min(1.0, (v + 1) / 2))
        color = f"rgb({int(255 * (1 - t))}, {int(120 + 100 * t)}, {int(255 * t)})"
        return f'<td style="background:{color};padding:6px;text-align:center">{v:.3f}</td>'

    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join(f"<tr><th>{html.escape(r)}</th>{''.join(cell(float(v)) for v in row)}</tr>"
                   for r, row in zip(rows, sims))
    return f'<table id="similarity-heatmap"><tr><th></th>{head}</tr>{body}</table>'


def _display(path: str, width: int | None = None, height: int | None = None) -> Any:
    """What the gallery shows for ``path``: the path itself, or for a tiny image (under ``DISPLAY_MIN_SIDE``) an
    upscaled copy so it is not a speck. Display only: the index and the embeddings are unchanged."""
    from PIL import Image

    try:
        if width is None or height is None:
            with Image.open(path) as im:
                width, height = im.size
        if min(width, height) >= DISPLAY_MIN_SIDE:
            return path
        factor = -(-DISPLAY_MIN_SIDE // max(1, min(width, height)))
        with Image.open(path) as im:
            rgba = im.convert("RGBA")  # transparent parts on white, as the gallery shows them
        flat = Image.new("RGBA", rgba.size, "white")
        flat.alpha_composite(rgba)
        return flat.convert("RGB").resize((rgba.width * factor, rgba.height * factor), Image.Resampling.BICUBIC)
    except (OSError, ValueError) as exc:  # the gallery shows its own broken-image mark
        logger.debug("no display copy of %s: %s", path, exc)
        return path


def _sample_labels() -> list[str]:
    import json

    entries = json.loads((SAMPLE_DIR / "gallery.json").read_text(encoding="utf-8"))
    return list(dict.fromkeys(e["label"] for e in entries.values()))


def default_labels(paths: list[str], roots: list[str]) -> tuple[list[str], str]:
    """Zero-shot labels to offer for an index, and where they come from: the sample gallery's labels
    (gallery.json), else the folder names under the index's roots, else file names that read as words, else a
    generic list."""
    real = [os.path.realpath(r) for r in roots]
    if real and all(r == os.path.realpath(SAMPLE_DIR) for r in real):
        return _sample_labels(), "the sample gallery's labels"
    top = {r.rstrip(os.sep) for r in real}
    folders = sorted({Path(p).parent.name for p in paths if os.path.realpath(Path(p).parent) not in top})
    if len(folders) >= 2:
        return [f.replace("_", " ") for f in folders][:MAX_DEFAULT_LABELS], "the index's folder names"
    words = sorted({Path(p).stem.replace("_", " ").replace("-", " ").strip() for p in paths})
    words = [w for w in words if w and all(part.isalpha() for part in w.split())]
    if len(words) >= 2:
        return words[:MAX_DEFAULT_LABELS], "the index's file names"
    return list(GENERIC_LABELS), "a generic list (the index has no class folders)"


def _capped_text(value: str | None, what: str) -> str:
    """A text box's value, refused (:class:`InvalidInputError`) past ``MAX_TEXT_CHARS`` before it is split."""
    value = value or ""
    if len(value) > MAX_TEXT_CHARS:
        raise InvalidInputError(f"{what}: {len(value)} characters; at most {MAX_TEXT_CHARS} per request")
    return value


def parse_labels(labels: str | None) -> list[str]:
    """The Zero-shot tab's comma-separated labels: at most ``MAX_LABELS`` (:class:`InvalidInputError` past it)."""
    names = [x.strip() for x in _capped_text(labels, "the label list").split(",") if x.strip()]
    if len(names) > MAX_LABELS:
        raise InvalidInputError(f"{len(names)} labels given; at most {MAX_LABELS} per request")
    return names


def compare_inputs(texts: str | None, files: list[Any] | None) -> tuple[list[str], list[str]]:
    """The Compare tab's lines and image paths, refused (:class:`InvalidInputError`) past ``MAX_COMPARE_TEXTS``
    lines, ``MAX_COMPARE_IMAGES`` images or ``MAX_TEXT_CHARS`` characters, so its N x N matrix, table and heatmap
    stay small whatever a client sends."""
    lines = [t.strip() for t in _capped_text(texts, "the Compare texts").splitlines() if t.strip()]
    paths = [getattr(f, "name", f) for f in (files or [])]
    if len(lines) > MAX_COMPARE_TEXTS or len(paths) > MAX_COMPARE_IMAGES:
        raise InvalidInputError(f"{len(lines)} texts and {len(paths)} images given; Compare takes at most "
                                f"{MAX_COMPARE_TEXTS} texts and {MAX_COMPARE_IMAGES} images per request")
    return lines, paths


def _unique(names: list[str]) -> list[str]:
    """Column headers: the names, with ``(2)``, ``(3)``... added to repeats."""
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n} ({seen[n]})")
    return out


def shown_name(path: str, roots: list[str]) -> str:
    """How the demo names an indexed file: its path relative to the indexed folder that holds it (``cat/0033.jpg``:
    in a collection sorted into folders a bare file name repeats), escaped for display; the file name when no
    folder holds it."""
    from .imagefiles import inside, printable

    for root in sorted(roots, key=len, reverse=True):
        if inside(path, root):
            return printable(os.path.relpath(path, root))
    return printable(os.path.basename(path))


def _status_line(index: Any) -> str:
    roots = ", ".join(f"`{Path(r).name or r}`" for r in index.roots) or "no folder"
    line = f"Index: **{len(index)} images** from {roots}"
    failed = index.failures()
    if failed:
        path, reason = failed[0]
        line += f" · {len(failed)} could not be read (first: {shown_name(path, index.roots)}: {reason})"
    return line


def build_app(embedder: Any, index: Any, notice: str | None = None, served: list[str] | None = None) -> Any:
    """The Gradio Blocks app (not launched). ``served``: the files results may show (default: the indexed
    images under the index's folders, see :func:`served_files`)."""
    import gradio as gr

    from .zeroshot import ZeroShotClassifier

    allowed = set(served_files(index, index.roots) if served is None else served)
    roots = index.roots  # result captions are paths relative to these

    def search(query: str, image: Any, k: float) -> tuple[list[tuple[str, str]], str]:
        # text is text: never a path or a URL (texts_only); images come only from the upload widget (PIL)
        if image is None and not (query or "").strip():
            return [], "Type a query or upload an image."
        if len(query or "") > MAX_TEXT_CHARS:
            raise gr.Error(f"The query is longer than {MAX_TEXT_CHARS} characters.")
        try:
            if image is not None:
                hits = index.search(image, k=int(k))
            else:
                hits = index.search(query.strip(), k=int(k), texts_only=True)
        except MultimodalEmbedError as exc:
            logger.info("demo search failed: %s", exc)
            raise gr.Error("The search failed: the query could not be used.") from None
        hits = [h for h in hits if h.path in allowed]  # only files the demo serves
        names = [shown_name(h.path, roots) for h in hits]
        gallery = [(_display(h.path, h.width, h.height), f"{h.score:.3f}  {n}") for h, n in zip(hits, names)]
        return gallery, "\n".join(f"{i + 1}. {n}  {h.score:.4f}" for i, (h, n) in enumerate(zip(hits, names)))

    def zero_shot(image: Any, labels: str, templates: str) -> dict[str, float]:
        try:
            names = parse_labels(labels)
        except InvalidInputError as exc:
            raise gr.Error(str(exc)) from None
        if image is None or not names:
            raise gr.Error("Upload an image and give comma-separated labels.")
        try:
            clf = ZeroShotClassifier(embedder, names, templates=templates)
        except MultimodalEmbedError as exc:
            raise gr.Error(str(exc)) from None
        probs = clf.probabilities([image])[0]
        return {name: float(p) for name, p in zip(names, probs)}

    def compare(texts: str, files: list[Any] | None) -> tuple[str, Any]:
        try:
            lines, paths = compare_inputs(texts, files)
        except InvalidInputError as exc:
            raise gr.Error(str(exc)) from None
        if not lines and not paths:
            raise gr.Error("Give some texts (one per line) and/or images.")
        vecs, names = [], []
        if lines:
            vecs.append(embedder.embed_text(lines, task=embedder.query_task))
            names += lines
        if paths:
            res = embedder.embed_images_with_errors(paths)
            vecs.append(res.vectors)
            names += [Path(paths[i]).name for i in res.indices]
        mat = np.concatenate(vecs)
        sims = mat @ mat.T
        rows = [[n, *[round(float(v), 4) for v in row]] for n, row in zip(names, sims)]
        import pandas as pd  # a gradio dependency

        return _heatmap(names, names, sims), pd.DataFrame(rows, columns=["", *_unique(names)])

    with gr.Blocks(title="multimodal_embed demo") as app:
        model_name = embedder.info.get("name") or embedder.info.get("text", {}).get("name")
        gr.Markdown(f"# multimodal_embed\nModel: `{model_name}`")
        if notice:
            gr.Markdown(notice, elem_id="model-notice")
        gr.Markdown(_status_line(index), elem_id="index-status")
        with gr.Tab("Search"):
            with gr.Row():
                query = gr.Textbox(label="Text query", elem_id="search-query", placeholder="a cup of coffee")
                qimage = gr.Image(label="...or an image", type="pil", elem_id="search-image")
                k = gr.Slider(1, 50, value=8, step=1, label="k")
            go = gr.Button("Search", elem_id="search-button", variant="primary")
            _, paths, _ = index.vectors()  # before any query: show what the index holds
            preview = [(_display(p), shown_name(p, roots)) for p in [p for p in paths if p in allowed][:12]]
            gallery = gr.Gallery(value=preview, label="Results", elem_id="search-results", columns=4, height="auto",
                                 object_fit="contain")
            ranking = gr.Textbox(label="Ranking", elem_id="search-ranking", lines=4)
            # the button and Enter in the box are one event: one API endpoint, /search
            gr.on([go.click, query.submit], search, [query, qimage, k], [gallery, ranking], api_name="search")
        with gr.Tab("Zero-shot"):
            with gr.Row():
                zimage = gr.Image(label="Image", type="pil", elem_id="zs-image")
                with gr.Column():
                    offered, source = default_labels(paths, index.roots)
                    labels = gr.Textbox(label="Labels (comma-separated)", value=", ".join(offered),
                                        info=f"Default: {source}", elem_id="zs-labels")
                    templates = gr.Dropdown(TEMPLATE_SETS, value="simple", label="Templates")
                    zgo = gr.Button("Classify", elem_id="zs-button", variant="primary")
            bars = gr.Label(label="Probabilities", num_top_classes=10, elem_id="zs-result")
            zgo.click(zero_shot, [zimage, labels, templates], bars, api_name="zero_shot")
        with gr.Tab("Compare"):
            texts = gr.Textbox(label="Texts (one per line)", lines=4, value="a cat\na rocket launch")
            files = gr.File(label="Images", file_count="multiple", file_types=["image"])
            cgo = gr.Button("Compare", elem_id="compare-button")
            heat = gr.HTML(label="Similarity heatmap", elem_id="compare-heatmap")
            table = gr.Dataframe(label="Cosine similarity", elem_id="compare-table")
            cgo.click(compare, [texts, files], [heat, table], api_name="compare")
    return app


def launch(model: str | None = None, index: str | None = None, images: str | None = None, *,
           host: str = "127.0.0.1", port: int = 7860, share: bool = False, block: bool = True,
           auth: str | None = None) -> Any:
    """Build and serve the demo.

    Served files are the indexed images under the folder given with ``images`` (or the sample gallery), or
    under the folders of the index the user named with ``index``; never paths read from a cache file. Binding
    a non-loopback ``host`` logs a warning; ``auth`` (``user:password``, or ``$MMEMBED_DEMO_AUTH``) turns on
    Gradio's login."""
    if index and images:
        raise MultimodalEmbedError("give --index or --images, not both")
    login = parse_auth(auth)
    if not is_loopback(host) or share:
        logger.warning("the demo listens on %s: anyone who can reach it can search your images%s", host,
                       "" if login else "; pass --auth user:password (or set MMEMBED_DEMO_AUTH) to require a login")
    if index:  # the index knows its model: load that one only
        if model:
            logger.info("the index %s records its model; --model %s is not used", index, model)
        idx = open_index(None, index, None)
        embedder, notice = idx.embedder, None
        trusted = idx.roots  # the index the user named on the command line
    else:
        demo_cache_dir()  # refuse an unsafe cache before loading a model
        embedder, notice = load_model(model)
        idx = open_index(embedder, None, images)
        trusted = [str(Path(images).expanduser().resolve() if images else SAMPLE_DIR)]
    served = served_files(idx, trusted)
    app = build_app(embedder, idx, notice, served=served)
    app.queue(max_size=32, default_concurrency_limit=1)
    app.launch(server_name=host, server_port=port, share=share, allowed_paths=served, max_file_size=MAX_UPLOAD,
               prevent_thread_lock=not block, show_error=False, auth=login)
    return app
