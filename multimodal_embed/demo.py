"""The Gradio demo: Search, Zero-shot, Compare and Map tabs over one model and one image index.

``mmembed demo [--index PATH | --images DIR] [--model NAME]`` or ``python demos/app.py``. With no model it uses
the toolkit's default (:func:`multimodal_embed.defaults.choose_model`), showing a notice when the built-in model
stands in for nomic-embed-v1.5. With no index or folder
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
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InvalidInputError, MultimodalEmbedError
from .serving.cli import is_loopback  # the one loopback rule (an empty host is every interface)

logger = logging.getLogger(__name__)

SAMPLE_DIR = Path(__file__).resolve().parent / "demo_assets"
MAX_UPLOAD = "10mb"
TEMPLATE_SETS = ["simple", "openai-imagenet", "none"]
DISPLAY_MIN_SIDE = 192  # smaller images (e.g. 32x32 CIFAR) are upscaled for display only
GENERIC_LABELS = ["cat", "dog", "car", "person", "landscape"]
MAX_DEFAULT_LABELS = 20
# Per-request caps, checked before any work: a request's cost (a texts x images table in Compare, N labels x
# templates in Zero-shot) stays bounded by them whatever a client sends (SECURITY.md).
MAX_COMPARE_TEXTS = 32
MAX_COMPARE_IMAGES = 16
MAX_LABELS = 100
MAX_TEXT_CHARS = 20_000  # a search query, the Compare texts, the label list
MAP_SIZE = (900, 640)  # the Map tab's picture, pixels
MAP_NEIGHBOURS = 8


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


THUMB_SIDE = 96  # Compare's column thumbnails (pixels, longest side)
LOW_RGB, MID_RGB, HIGH_RGB = (33, 102, 172), (247, 247, 247), (178, 24, 43)  # ColorBrewer RdBu ends, white middle


def diverging_color(value: float, centre: float, spread: float) -> str:
    """A blue-white-red colour for ``value``: white at ``centre``, full blue / red at ``centre -/+ spread``."""
    t = 0.0 if spread <= 0 else max(-1.0, min(1.0, (value - centre) / spread))
    end = HIGH_RGB if t > 0 else LOW_RGB
    rgb = [round(m + (e - m) * abs(t)) for m, e in zip(MID_RGB, end)]
    return f"rgb({rgb[0]}, {rgb[1]}, {rgb[2]})"


def _thumbnail(path: str) -> str:
    """A small JPEG of ``path`` as a data URI (the table is one HTML block: no file is served for it)."""
    import base64
    import io

    from PIL import Image

    try:
        with Image.open(path) as im:
            rgba = im.convert("RGBA")
        flat = Image.new("RGBA", rgba.size, "white")
        flat.alpha_composite(rgba)
        thumb = flat.convert("RGB")
        thumb.thumbnail((THUMB_SIDE, THUMB_SIDE))
        buf = io.BytesIO()
        thumb.save(buf, "JPEG", quality=85)
    except (OSError, ValueError):
        return ""
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _heatmap(rows: list[str], cols: list[str], sims: np.ndarray, thumbs: list[str] | None = None) -> str:
    """The similarity table as HTML (no plotting dependency): ``rows`` x ``cols`` cells coloured on a diverging
    blue-white-red scale centred on the table's median, so that near values in a narrow band (cosines of one
    model often span 0.1-0.4) still differ visibly; each cell prints its value. ``thumbs`` (data URIs) head the
    columns when given."""
    vals = sims.astype(float).ravel()
    centre = float(np.median(vals)) if vals.size else 0.0
    spread = float(np.max(np.abs(vals - centre))) if vals.size else 0.0

    def cell(v: float) -> str:
        ink = "#fff" if spread and abs(v - centre) / spread > 0.6 else "#111"
        return (f'<td style="background:{diverging_color(v, centre, spread)};color:{ink};padding:6px 10px;'
                f'text-align:center;font-variant-numeric:tabular-nums">{v:.3f}</td>')

    def head(i: int, name: str) -> str:
        img = (f'<img src="{thumbs[i]}" alt="{html.escape(name)}" style="display:block;margin:0 auto 4px;'
               f'max-width:{THUMB_SIDE}px;max-height:{THUMB_SIDE}px">') if thumbs and thumbs[i] else ""
        return f'<th style="padding:4px;font-weight:normal;font-size:0.85em">{img}{html.escape(name)}</th>'

    top = "".join(head(i, c) for i, c in enumerate(cols))
    body = "".join(f'<tr><th style="text-align:right;padding:4px 8px">{html.escape(r)}</th>'
                   f"{''.join(cell(float(v)) for v in row)}</tr>" for r, row in zip(rows, sims))
    legend = (f'<p class="compare-legend" style="font-size:0.85em">Cosine similarity. White: the table\'s median '
              f'({centre:.3f}); red: higher, blue: lower (full colour at ±{spread:.3f}).</p>')
    return (f'<table id="similarity-heatmap" style="border-collapse:collapse"><tr><th></th>{top}</tr>{body}</table>'
            f"{legend}")


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
    lines, ``MAX_COMPARE_IMAGES`` images or ``MAX_TEXT_CHARS`` characters, so its table (and thumbnails)
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


def compare_table(embedder: Any, lines: list[str], paths: list[str]) -> str:
    """The Compare tab's table: texts (rows) x images (columns, with thumbnails), each pair's cosine once; with
    only texts or only images, those against themselves. Images that cannot be read are left out."""
    names: list[str] = []
    thumbs: list[str] = []
    images = None
    if paths:
        res = embedder.embed_images_with_errors(paths)
        images = res.vectors
        names = _unique([Path(paths[i]).name for i in res.indices])
        thumbs = [_thumbnail(paths[i]) for i in res.indices]
    texts = embedder.embed_text(lines, task=embedder.query_task) if lines else None
    if texts is not None and images is not None and len(images):
        return _heatmap(_unique(lines), names, texts @ images.T, thumbs)
    if texts is not None:
        return _heatmap(_unique(lines), _unique(lines), texts @ texts.T)
    if images is None or not len(images):
        raise InvalidInputError("none of the images could be read")
    return _heatmap(names, names, images @ images.T, thumbs)


def user_error(message: str) -> Exception:
    """The error for a user's mistake in the demo (an empty box, too long a query): Gradio's toast says it, and
    nothing is printed on the server's console (no traceback). Raise it from an event handler."""
    import gradio as gr

    return gr.Error(message, print_exception=False)


def build_app(embedder: Any, index: Any, notice: str | None = None, served: list[str] | None = None) -> Any:
    """The Gradio Blocks app (not launched). ``served``: the files results may show (default: the indexed
    images under the index's folders, see :func:`served_files`)."""
    import gradio as gr

    from .zeroshot import ZeroShotClassifier

    allowed = set(served_files(index, index.roots) if served is None else served)
    roots = index.roots  # result captions are paths relative to these
    offered, source = default_labels(index.vectors()[1], roots)  # Zero-shot's labels (and its empty-box fallback)

    def search(query: str, image: Any, k: float) -> tuple[list[tuple[str, str]], str]:
        # text is text: never a path or a URL (texts_only); images come only from the upload widget (PIL)
        if image is None and not (query or "").strip():
            return [], "Type a query or upload an image."
        if len(query or "") > MAX_TEXT_CHARS:
            raise user_error(f"The query is longer than {MAX_TEXT_CHARS} characters.")
        try:
            if image is not None:
                hits = index.search(image, k=int(k))
            else:
                hits = index.search(query.strip(), k=int(k), texts_only=True)
        except MultimodalEmbedError as exc:
            logger.info("demo search failed: %s", exc)
            raise user_error("The search failed: the query could not be used.") from None
        hits = [h for h in hits if h.path in allowed]  # only files the demo serves
        names = [shown_name(h.path, roots) for h in hits]
        gallery = [(_display(h.path, h.width, h.height), f"{h.score:.3f}  {n}") for h, n in zip(hits, names)]
        return gallery, "\n".join(f"{i + 1}. {n}  {h.score:.4f}" for i, (h, n) in enumerate(zip(hits, names)))

    def zero_shot(image: Any, labels: str, templates: str) -> dict[str, float]:
        try:
            names = parse_labels(labels) or list(offered)  # an emptied box: the default labels, as its hint says
        except InvalidInputError as exc:
            raise user_error(str(exc)) from None
        if image is None:
            raise user_error("Upload an image to classify (the Image box is empty).")
        try:
            clf = ZeroShotClassifier(embedder, names, templates=templates)
        except MultimodalEmbedError as exc:
            raise user_error(str(exc)) from None
        probs = clf.probabilities([image])[0]
        return {name: float(p) for name, p in zip(names, probs)}

    def compare(texts: str, files: list[Any] | None) -> str:
        try:
            lines, paths = compare_inputs(texts, files)
        except InvalidInputError as exc:
            raise user_error(str(exc)) from None
        if not lines and not paths:
            raise user_error("Give some texts (one per line) and/or images.")
        try:
            return compare_table(embedder, lines, paths)
        except MultimodalEmbedError as exc:
            raise user_error(str(exc)) from None

    drawn: dict[str, Any] = {}  # the Map tab's map of the index, built on first use (the same for every visitor)

    def draw_map() -> tuple[Any, str]:
        from .map import build_map
        from .map.picture import render_png
        from .map.sources import MapSource

        _, paths, mat = index.vectors()
        if len(paths) == 0:
            raise gr.Error("The index has no images to map.")
        if drawn.get("n") != len(paths):
            # names: the index's own labels (gallery.json, folder names), else the ImageNet names too
            vocabulary = "imagenet" if offered == GENERIC_LABELS else None
            result = build_map(MapSource("image", list(paths), mat), embedder, labels=offered,
                               vocabulary=vocabulary, thumbnails=False, show_progress=False)
            drawn.update(n=len(paths), result=result, vectors=mat, picture=render_png(result, *MAP_SIZE))
        result = drawn["result"]
        named = ", ".join(f"{c.name} ({c.size})" for c in result.clusters if c.name != "unnamed") or "none named"
        return drawn["picture"], (f"{len(paths)} images, layout {result.layout_method}, {len(result.clusters)} "
                                  f"clusters: {named}. Click a point for its nearest images.")

    def map_neighbours(evt: gr.SelectData) -> tuple[list[tuple[Any, str]], str]:
        from .map.picture import point_at

        result = drawn.get("result")
        if result is None or not isinstance(evt.index, (list, tuple)) or len(evt.index) != 2:
            return [], "Draw the map, then click a point."
        row = point_at(result, *MAP_SIZE, float(evt.index[0]), float(evt.index[1]))
        if row is None:
            return [], "No image there: click on a point."
        hits = [h for h in index.search(np.asarray(drawn["vectors"][row]), k=MAP_NEIGHBOURS + 1,
                                        include_query=True) if h.path in allowed]
        return ([(_display(h.path, h.width, h.height), f"{h.score:.3f}  {shown_name(h.path, roots)}") for h in hits],
                f"Nearest images to {shown_name(result.items[row], roots)}")

    # gradio passes the click to a parameter annotated gr.SelectData: the class itself, not the string that
    # `from __future__ import annotations` leaves (gr is imported in this function only)
    map_neighbours.__annotations__["evt"] = gr.SelectData

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
            # before the first search: an empty state that says what to do, not the index in file-name order
            hint = gr.Markdown(f"**No search yet.** Type what you are looking for (*a dog on a beach*) or upload an "
                               f"image, then press Search: the closest of the {len(index)} indexed images appear "
                               f"here, best first.", elem_id="search-empty")
            gallery = gr.Gallery(value=[], label="Results", elem_id="search-results", columns=4, height="auto",
                                 object_fit="contain")
            ranking = gr.Textbox(label="Ranking", elem_id="search-ranking", lines=4)
            # the button and Enter in the box are one event: one API endpoint, /search
            searched = gr.on([go.click, query.submit], search, [query, qimage, k], [gallery, ranking],
                             api_name="search")
            searched.then(lambda: gr.update(visible=False), None, hint, api_name=False)  # the empty state goes
        with gr.Tab("Zero-shot"):
            with gr.Row():
                zimage = gr.Image(label="Image", type="pil", elem_id="zs-image")
                with gr.Column():
                    labels = gr.Textbox(label="Labels (comma-separated)", value=", ".join(offered),
                                        info=f"Default (also used when the box is empty): {source}",
                                        elem_id="zs-labels")
                    templates = gr.Dropdown(TEMPLATE_SETS, value="simple", label="Templates")
                    zgo = gr.Button("Classify", elem_id="zs-button", variant="primary")
            bars = gr.Label(label="Probabilities", num_top_classes=10, elem_id="zs-result")
            zgo.click(zero_shot, [zimage, labels, templates], bars, api_name="zero_shot")
        with gr.Tab("Compare"):
            texts = gr.Textbox(label="Texts (one per line)", lines=4, value="a cat\na rocket launch")
            files = gr.File(label="Images", file_count="multiple", file_types=["image"])
            cgo = gr.Button("Compare", elem_id="compare-button", variant="primary")
            heat = gr.HTML(label="Texts x images", elem_id="compare-heatmap")
            cgo.click(compare, [texts, files], heat, api_name="compare")
        with gr.Tab("Map"):
            mgo = gr.Button("Draw the map", elem_id="map-button", variant="primary")
            mnote = gr.Markdown("The whole index on one picture, clustered and named by zero-shot "
                                "(`mmembed map` writes it as an interactive page).", elem_id="map-note",
                                label="About the map")
            mpic = gr.Image(label="Map: click a point", type="pil", interactive=False, elem_id="map-image")
            mnear = gr.Gallery(value=[], label="Neighbours", elem_id="map-neighbours", columns=6, height="auto",
                               object_fit="contain")
            mwhat = gr.Markdown(elem_id="map-selected")
            mgo.click(draw_map, None, [mpic, mnote], api_name="map")
            mpic.select(map_neighbours, None, [mnear, mwhat], api_name=False)
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
    # quiet: Gradio's own banner ends with "set share=True in launch()", advice a CLI user cannot follow
    app.launch(server_name=host, server_port=port, share=share, allowed_paths=served, max_file_size=MAX_UPLOAD,
               prevent_thread_lock=True, show_error=False, auth=login, quiet=True)
    print(f"mmembed demo: open {app.local_url} in a browser (Ctrl+C to stop)", file=sys.stderr, flush=True)
    if block:
        app.block_thread()
    return app
