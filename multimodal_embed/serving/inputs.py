"""Turning request items into what the library embeds, item by item, with errors that name the item.

Texts stay strings. Images arrive as data URIs (``data:image/png;base64,...``), as OpenAI-style content parts
(``{"type": "image_url", "image_url": {"url": ...}}``) or, with ``"modality": "image"``, as plain strings. They become
bytes; an http(s) URL is passed on (to the hardened loader's time and size bounds) only when the operator enabled
fetching. A local path or ``file:`` URL from a client is always refused: the server never reads files for a client.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any

from .schemas import ApiError

_DATA_URI = re.compile(r"^data:([\w.+-]+/[\w.+-]+)?((?:;[\w.+-]+=[\w.+-]+)*)(;base64)?,", re.IGNORECASE)


@dataclass
class Limits:
    """Per-request bounds (the body size is bounded before parsing, by the app's middleware)."""

    max_items: int = 2048
    max_images: int = 64
    max_image_bytes: int = 20 * 1024 * 1024
    allow_url_fetch: bool = False


@dataclass
class Item:
    kind: str  # "text" or "image"
    value: Any  # str (text or http(s) URL) or bytes


def _bad(message: str, param: str, code: str = "invalid_input") -> ApiError:
    return ApiError(400, message, param=param, code=code)


def decode_image(value: Any, param: str, limits: Limits) -> Item:
    """A data URI (or, when allowed, an http(s) URL) as an image item."""
    if not isinstance(value, str):
        raise _bad(f"{param}: an image must be a data URI string, got {type(value).__name__}", param)
    m = _DATA_URI.match(value[:256])
    if m:
        if not m.group(3):
            raise _bad(f"{param}: only base64 data URIs are supported (data:image/...;base64,...)", param)
        payload = value[m.end():]
        if len(payload) > (limits.max_image_bytes * 4) // 3 + 4:
            raise ApiError(413, f"{param}: the image is larger than {limits.max_image_bytes} bytes", param=param,
                           code="image_too_large")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise _bad(f"{param}: the data URI is not valid base64", param) from None
        if not data:
            raise _bad(f"{param}: the image is empty", param)
        return Item("image", data)
    scheme = value.split(":", 1)[0].lower() if ":" in value[:16] else ""
    if scheme in ("http", "https"):
        if not limits.allow_url_fetch:
            raise _bad(f"{param}: image URLs are not fetched by this server (it runs without --allow-url-fetch); "
                       "send the image as a data URI", param, "url_fetch_disabled")
        return Item("image", value)
    raise _bad(f"{param}: an image must be a base64 data URI (data:image/...;base64,...); local paths and file: "
               "URLs are never read", param)


def text_item(value: str, param: str) -> Item:
    """A text item; an empty string is refused, as OpenAI does (it has nothing to embed)."""
    if not value:
        raise _bad(f"{param}: a text cannot be an empty string", param)
    return Item("text", value)


def _part(part: dict[str, Any], param: str, limits: Limits) -> Item:
    kind = part.get("type")
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise _bad(f"{param}: a text part needs a string 'text'", param)
        return text_item(text, param)
    if kind in ("image_url", "image"):
        url = part.get("image_url", part.get("image"))
        if isinstance(url, dict):
            url = url.get("url")
        return decode_image(url, param, limits)
    raise _bad(f"{param}: unknown content part type {kind!r}; use 'text' or 'image_url'", param)


def parse_input(value: Any, *, modality: str | None, limits: Limits, param: str = "input") -> list[Item]:
    """The request's ``input`` as items, or :class:`ApiError` naming the first bad one."""
    if isinstance(value, (str, dict)):
        value = [value]
    if not isinstance(value, list):
        raise _bad(f"{param} must be a string or a list, got {type(value).__name__}", param)
    if not value:
        raise _bad(f"{param} is empty", param)
    if len(value) > limits.max_items:
        raise _bad(f"{param} has {len(value)} items; at most {limits.max_items} per request", param,
                   "too_many_inputs")
    if all(isinstance(v, int) and not isinstance(v, bool) for v in value) or all(
            isinstance(v, list) for v in value):
        raise _bad(f"{param}: token-id inputs are not supported (the model's tokenizer runs on the server); "
                   "send the texts as strings (LangChain's OpenAIEmbeddings: pass check_embedding_ctx_length=False)",
                   param, "token_ids_not_supported")
    items: list[Item] = []
    for i, v in enumerate(value):
        where = f"{param}[{i}]"
        if isinstance(v, str):
            items.append(decode_image(v, where, limits) if modality == "image" else text_item(v, where))
        elif isinstance(v, dict):
            items.append(_part(v, where, limits))
        else:
            raise _bad(f"{where} must be a string or a content part, got {type(v).__name__}", where)
    n_images = sum(it.kind == "image" for it in items)
    if n_images > limits.max_images:
        raise _bad(f"{param} has {n_images} images; at most {limits.max_images} per request", param,
                   "too_many_images")
    return items
