"""From a request's items to vectors, shared by every embedding route (``/v1/embeddings``, Cohere's ``/v2/embed``):
the one rule for a client's text, token counting and the long-text modes, the model's queue, and the wire encodings.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import numpy as np

from ..encoders import truncate_unit
from ..errors import MultimodalEmbedError
from .batcher import ImageResult, TextResult, Work
from .inputs import Item
from .schemas import ApiError

INLINE_TOKENIZE_CHARS = 20_000  # request texts up to this size are counted on the event loop (well under 1 ms)


def check_text(text: str, name: str) -> None:
    """The one rule for a text a client sends (every route): the library's ``check_texts``, as a 400 naming it."""
    from ..text import check_texts

    try:
        check_texts([text])
    except MultimodalEmbedError as exc:
        raise ApiError(400, f"{name}: {str(exc).removeprefix('texts[0] ')}", param=name, code="invalid_input") from None


async def count_tokens(emb: Any, texts: list[str], task: str | None) -> list[int]:
    """Tokens per text with the model's tokenizer: on the event loop when the texts are short, else in a thread."""
    if sum(map(len, texts)) <= INLINE_TOKENIZE_CHARS:  # a thread hop costs more than tokenizing this
        return emb.count_tokens(texts, task)
    return await asyncio.to_thread(emb.count_tokens, texts, task)


def long_text_mode(config: Any, long_text: str | None = None, truncate: bool | None = None) -> str:
    """How over-long texts are embedded: the request's ``long_text``, else its ``truncate`` flag, else the server's
    ``long_text`` (``--long-text``), else ``truncate`` when the server runs with ``--truncate``, else ``refuse``."""
    if long_text is not None:
        return long_text
    if truncate is not None:
        return "truncate" if truncate else "refuse"
    return config.long_text or ("truncate" if config.truncate else "refuse")


async def text_work(emb: Any, texts: list[str], task: str | None, dim: int | None, mode: str,
                    names: list[str]) -> tuple[Work, int]:
    """The queued work for a request's texts and its cost in tokens: each text checked (``names[i]`` in errors),
    counted with the model's tokenizer (on the event loop when short), and refused over the context when ``mode``
    is ``refuse``; ``truncate`` cuts, ``mean`` averages the chunks (the library's ``long_text`` modes)."""
    for name, text in zip(names, texts):
        check_text(text, name)
    counts = await count_tokens(emb, texts, task)
    limit = emb.max_text_length
    for name, n in zip(names, counts):
        if limit and n > limit and mode == "refuse":
            raise ApiError(400, f"{name} has {n} tokens, more than the model's {limit}; shorten it, or send "
                                f"\"long_text\": \"truncate\" (cut it) or \"mean\" (average its chunks)",
                           param=name, code="context_length_exceeded")
    tokens = sum(n if mode == "mean" or not limit else min(n, limit) for n in counts)
    long_text = "mean" if mode == "mean" else "truncate"
    return Work("text", list(texts), cost=tokens, options=(task, None if dim == emb.dim else dim, long_text)), tokens


async def embed_items(state: Any, request: Any, served: Any, items: list[Item], task: str | None, dim: int, mode: str,
                      param: str) -> tuple[np.ndarray, int]:
    """A request's items embedded through the model's queue, as ``embed_text`` / ``embed_images`` would: rows in
    item order (texts with ``task``, ``dim`` and the long-text ``mode``; images cut to ``dim``) and the tokens used.
    Errors name ``{param}[i]``."""
    emb = served.embedder
    texts = [(i, it.value) for i, it in enumerate(items) if it.kind == "text"]
    images = [(i, it.value) for i, it in enumerate(items) if it.kind == "image"]
    for kind, have, wanted in (("text", emb.text_encoder, texts), ("image", emb.vision_encoder, images)):
        if wanted and have is None:
            raise ApiError(400, f"the model {served.name!r} has no {kind} tower", param=param,
                           code=f"no_{kind}_tower")
    works: list[Work] = []
    tokens = 0
    if texts:
        work, tokens = await text_work(emb, [t for _, t in texts], task, dim, mode, [f"{param}[{i}]" for i, _ in texts])
        works.append(work)
    if images:
        works.append(Work("image", [v for _, v in images], cost=len(images)))
    results = await state.run(request, served, works)
    vectors = np.zeros((len(items), dim), np.float32)
    for result in results:
        if isinstance(result, TextResult):
            vectors[[i for i, _ in texts]] = result.vectors
        elif isinstance(result, ImageResult):
            if result.failures:
                f = result.failures[0]
                where = f"{param}[{images[f.index][0]}]"
                raise ApiError(400, f"{where}: the image could not be read: {f.reason}", param=where,
                               code="invalid_image")
            vectors[[images[p][0] for p in result.indices]] = truncate_unit(result.vectors, dim)
    state.metrics.tokens.labels(served.name).inc(tokens)
    state.metrics.images.labels(served.name).inc(len(images))
    return vectors, tokens


def encode(vec: np.ndarray, fmt: str) -> Any:
    if fmt == "base64":
        return base64.b64encode(np.ascontiguousarray(vec, dtype="<f4").tobytes()).decode("ascii")
    return vec.astype(np.float32).tolist()
