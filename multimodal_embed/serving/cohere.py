"""Cohere's ``POST /v2/embed`` on ``mmembed serve``, for the Cohere client and the frameworks that speak it.

``texts`` with ``input_type`` ``search_query`` / ``search_document`` / ``classification`` / ``clustering`` (exactly
nomic's task prefixes; models without prefixes ignore them) are embedded as ``embed_text(texts, task=input_type)``,
``images`` (data URIs) as ``embed_images``, and ``inputs`` (content lists) one embedding each, read as the
chat-style ``messages`` of ``/v1/embeddings`` are. ``output_dimension`` is the Matryoshka size (``dimensionality``).
``embedding_types``: ``float`` (the default), ``base64`` (the little-endian float32 bytes), ``binary`` and
``ubinary`` (one sign bit per value, ``> 0``, packed eight to a byte; ``binary`` is the packed byte minus 128).
``int8`` / ``uint8`` are refused: they need a calibrated scale that these models do not define. ``truncate``:
``END`` (Cohere's default) cuts at the model's context, ``NONE`` refuses a longer text, ``MEAN`` (an extension)
averages its chunks, as ``long_text="mean"``; ``START`` is refused. Errors have Cohere's shape,
``{"id": ..., "message": ...}``, the guard's refusals (401, 413, 429) included.
"""

from __future__ import annotations

import io
import json
import uuid
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import MultimodalEmbedError
from .aliases import TASKS, resolve
from .chat import message_item
from .embedding import embed_items, encode
from .inputs import decode_image
from .schemas import ApiError

PREFIX = "/v2/"
EMBEDDING_TYPES = ("float", "base64", "binary", "ubinary")
TRUNCATE = {"END": "truncate", "NONE": "refuse", "MEAN": "mean"}


class CohereEmbedRequest(BaseModel):
    """Cohere's v2 embed request (fields this server does not use are ignored, as Cohere's ``priority``)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    input_type: str | None = None
    texts: list[str] | None = None
    images: list[str] | None = None
    inputs: list[Any] | None = None
    embedding_types: list[str] | None = None
    output_dimension: int | None = Field(default=None, ge=1)
    max_tokens: int | None = None
    truncate: Literal["NONE", "START", "END", "MEAN"] | None = None


def _bad(message: str, param: str | None = None, code: str = "invalid_input") -> ApiError:
    return ApiError(400, message, param=param, code=code)


def _binary(vectors: np.ndarray, signed: bool) -> list[list[int]]:
    packed = np.packbits(vectors > 0, axis=-1)
    return (packed.astype(np.int16) - 128).tolist() if signed else packed.tolist()


def _image_meta(data: Any) -> dict[str, Any]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        bits = 16 if im.mode.startswith("I;16") else 32 if im.mode in ("I", "F") else 1 if im.mode == "1" else 8
        return {"width": im.width, "height": im.height, "format": (im.format or "").lower(), "bit_depth": bits}


def _parse(body: bytes) -> CohereEmbedRequest:
    try:
        raw = json.loads(body or b"null")
    except ValueError:
        raise _bad("the request body is not valid JSON") from None
    if not isinstance(raw, dict):
        raise _bad("the request body must be a JSON object")
    try:
        return CohereEmbedRequest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or None
        raise _bad(f"{where + ': ' if where else ''}{first.get('msg', 'invalid request')}", where) from None


def add_cohere_routes(app: FastAPI, state: Any) -> None:
    """Register ``POST /v2/embed`` and the middleware that gives every ``/v2/`` error Cohere's shape."""
    @app.post("/v2/embed")
    async def cohere_embed(request: Request) -> JSONResponse:
        req = _parse(await request.body())
        served, _, _ = resolve(state, req.model)
        emb = served.embedder
        given = [k for k in ("texts", "images", "inputs") if getattr(req, k)]
        if len(given) != 1:
            raise _bad("send exactly one of texts, images or inputs (a non-empty list)", "texts")
        kind = given[0]
        values = getattr(req, kind)
        if len(values) > state.limits.max_items:
            raise _bad(f"{kind} has {len(values)} items; at most {state.limits.max_items} per request", kind,
                       "too_many_inputs")
        types = req.embedding_types or ["float"]
        for t in types:
            if t not in EMBEDDING_TYPES:
                raise _bad(f"embedding_types: {t!r} is not supported here; use {', '.join(EMBEDDING_TYPES)}"
                           + (" (int8/uint8 need a calibrated scale these models do not define)"
                              if t in ("int8", "uint8") else ""), "embedding_types")
        if req.max_tokens is not None:
            raise _bad(f"max_tokens is not supported; texts are cut at the model's context "
                       f"({emb.max_text_length} tokens) with truncate END, or averaged with MEAN", "max_tokens")
        if req.truncate == "START":
            raise _bad("truncate START is not supported; use END (cut at the context), NONE (refuse) or MEAN "
                       "(average the chunks)", "truncate")
        try:
            dim = emb.check_dimensionality(req.output_dimension)
        except MultimodalEmbedError as exc:
            raise _bad(str(exc), "output_dimension", "invalid_dimensions") from None

        if kind == "inputs":
            items = []
            for i, value in enumerate(values):
                content = value.get("content") if isinstance(value, dict) else None
                if not isinstance(content, list):
                    raise _bad(f"inputs[{i}] must be an object with a 'content' list", f"inputs[{i}]")
                try:
                    items.append(message_item([{"role": "user", "content": content}], state.limits))
                except ApiError as exc:
                    raise _bad(f"inputs[{i}]: {exc.message}", f"inputs[{i}]", exc.code or "invalid_input") from None
        elif kind == "images":
            items = []
            for i, uri in enumerate(values):
                if not uri.lower().startswith("data:"):
                    raise _bad(f"images[{i}]: an image must be a data URI (data:image/...;base64,...)",
                               f"images[{i}]")
                items.append(decode_image(uri, f"images[{i}]", state.limits))
        else:
            from .inputs import Item

            items = [Item("text", t) for t in values]
        n_images = sum(it.kind == "image" for it in items)
        if n_images > state.limits.max_images:
            raise _bad(f"{n_images} images; at most {state.limits.max_images} per request", kind, "too_many_images")
        task = req.input_type
        if n_images < len(items):
            if task is None:
                raise _bad(f"input_type is required for texts: one of {', '.join(TASKS)}", "input_type")
            if task not in TASKS:
                raise _bad(f"input_type {task!r} is not one of {', '.join(TASKS)} (for texts)", "input_type")
        mode = TRUNCATE[req.truncate] if req.truncate else "truncate"  # Cohere's default: END
        vectors, tokens = await embed_items(state, request, served, items, task, dim, mode, kind)
        image_data = [it.value for it in items if it.kind == "image"]

        embeddings: dict[str, Any] = {}
        for t in dict.fromkeys(types):
            if t == "float":
                embeddings["float"] = vectors.tolist()
            elif t == "base64":
                embeddings["base64"] = [encode(v, "base64") for v in vectors]
            else:
                embeddings[t] = _binary(vectors, signed=t == "binary")
        out: dict[str, Any] = {"id": str(uuid.uuid4()), "embeddings": embeddings, "response_type":
                               "embeddings_by_type",
                               "meta": {"api_version": {"version": "2"},
                                        "billed_units": {"input_tokens": tokens, "images": n_images}}}
        if kind == "texts":
            out["texts"] = list(values)
        if image_data:
            out["images"] = [_image_meta(v) for v in image_data if isinstance(v, (bytes, bytearray))]
        return JSONResponse(out)

    app.add_middleware(CohereErrors)


class CohereErrors:
    """Pure ASGI middleware: an error answered on a ``/v2/`` path (by a route, the validation handler or the guard)
    is rewritten from OpenAI's ``{"error": {...}}`` to Cohere's ``{"id": ..., "message": ...}``, same status and
    headers. Other paths and successful answers pass through untouched."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope.get("path", "").startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        held: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def reshape(message: dict) -> None:
            if message["type"] == "http.response.start" and message["status"] >= 400:
                held["start"] = message
                return
            if "start" not in held:
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            try:
                error = json.loads(b"".join(chunks)).get("error") or {}
                body = json.dumps({"id": str(uuid.uuid4()), "message": error.get("message", "error")}).encode()
            except (ValueError, AttributeError):
                body = b"".join(chunks)
            start = held["start"]
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body, "more_body": False})

        await self.app(scope, receive, reshape)
