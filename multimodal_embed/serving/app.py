"""The ASGI app: OpenAI-compatible ``/v1/embeddings`` for texts and images, ``/v1/search``, ``/v1/classify``,
``/v1/models``, ``/health`` and ``/metrics``.

``create_app(ServeConfig(...))`` returns a FastAPI app for any ASGI server; ``mmembed serve`` runs it on uvicorn.
Models load in the background at start-up (``/health`` answers 503 until they are ready); every request's work
goes through the model's :class:`~multimodal_embed.serving.batcher.Batcher`.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import MultimodalEmbedError
from .batcher import Batcher, BatcherClosedError, ImageResult, QueueFullError, TextResult, Work
from .body import CLOSE, check_json_size, declares_body, read_body
from .embedding import check_text, count_tokens, embed_items, encode, long_text_mode
from .inputs import Item, Limits, parse_input, text_item
from .metrics import Metrics
from .schemas import ApiError, ClassifyRequest, EmbeddingsRequest, SearchRequest

logger = logging.getLogger(__name__)

BUILTIN_MODEL = "minilm-efficientnet-lite0"
TASKS = ("search_query", "search_document", "clustering", "classification")
HEALTH_PROBE_S = 30.0  # a health probe that waits longer for the model thread reports it busy
MAX_LABEL_CHARS = 1000  # a zero-shot label (a class name) in characters
LABEL_CACHE = 8192  # zero-shot label embeddings kept per server (LRU)
ROUTES = ("/v1/embeddings", "/v1/search", "/v1/classify", "/v1/models", "/v2/embed", "/health", "/metrics")
INLINE_SCAN_BYTES = 1 << 20  # bodies up to this size have their JSON values counted on the event loop
KEYLESS = ("/health",)  # answered without the API key, so they take no body


@dataclass
class ModelSource:
    """One served model: a name or folder (``model``), or two tower folders (``text`` / ``vision``)."""

    model: str | None = None
    text: str | None = None
    vision: str | None = None
    served_name: str | None = None

    @property
    def name(self) -> str:
        return self.served_name or self.model or self.text or self.vision or BUILTIN_MODEL


@dataclass
class ServeConfig:
    """Everything ``mmembed serve`` sets; the defaults are the safe ones."""

    models: list[ModelSource] = field(default_factory=lambda: [ModelSource(BUILTIN_MODEL)])
    index: str | None = None
    api_key: str | None = None
    device: str | None = None
    precision: str | None = None
    allow_url_fetch: bool = False
    truncate: bool = False  # cut over-long texts instead of refusing them (long_text="truncate")
    long_text: str | None = None  # over-long texts when a request says nothing: refuse, truncate or mean (chunks)
    max_body_bytes: int = 32 * 1024 * 1024
    max_json_values: int = 100_000  # JSON values and keys parsed per request (each costs 50-100 bytes as Python)
    body_idle_s: float = 10.0  # a body that sends no byte for this long is refused (408) and its connection closed
    body_timeout_s: float = 60.0  # the whole body must arrive within this long of the request's start (408)
    header_timeout_s: float = 10.0  # a request's headers, from the connection's start or last answer (else closed)
    max_items: int = 2048
    max_images: int = 64
    max_image_bytes: int = 20 * 1024 * 1024
    max_labels: int = 256
    max_queue: int = 4096  # texts and images waiting per model; more is answered 429
    max_inflight: int = 1024  # requests being handled at once; more is answered 429
    max_batch_tokens: int = 8192
    max_batch_texts: int = 64
    max_batch_images: int = 32
    max_wait_ms: float = 2.0
    request_timeout_s: float = 120.0
    load_in_background: bool = True  # answer /health (503) while loading; False: load before serving (Ray Serve)


@dataclass
class ServedModel:
    name: str
    embedder: Any
    batcher: Batcher

    def describe(self, created: int) -> dict[str, Any]:
        emb = self.embedder
        text = emb.text_encoder
        return {"id": self.name, "object": "model", "created": created, "owned_by": "multimodal-embed",
                "dimensions": int(emb.dim), "modalities": emb.modalities,
                "matryoshka_dimensions": list(getattr(text or emb.vision_encoder, "matryoshka_dims", ()) or ()),
                "max_input_tokens": emb.max_text_length, "tasks": sorted(getattr(text, "prefixes", {}) or {}),
                "family": emb.info.get("family")}


class ServerState:
    """What the routes share: the models (once loaded), the index, caches, and the draining flag."""

    def __init__(self, config: ServeConfig, embedders: Mapping[str, Any] | None) -> None:
        self.config = config
        self.limits = Limits(config.max_items, config.max_images, config.max_image_bytes, config.allow_url_fetch)
        self.metrics = Metrics()
        self.models: dict[str, ServedModel] = {}
        self.preloaded = dict(embedders) if embedders else None
        self.ready = False
        self.load_error: str | None = None
        self.draining = False
        self.inflight = 0
        self.created = int(time.time())
        self.index: Any = None
        self.index_executor: ThreadPoolExecutor | None = None
        self.classifiers: OrderedDict[tuple, Any] = OrderedDict()  # (model, labels, templates) -> classifier
        self.label_vectors: OrderedDict[tuple, np.ndarray] = OrderedDict()  # (model, templates, label) -> vector
        self.health_lock = asyncio.Lock()
        self.health_cache: tuple[float, dict[str, Any]] | None = None

    # -- start and stop --------------------------------------------------------------------------------------
    def _load_embedders(self) -> dict[str, Any]:
        from ..embedder import Embedder

        out: dict[str, Any] = {}
        for src in self.config.models:
            if src.name in out:
                raise ApiError(500, f"two models are served as {src.name!r}; use --served-name")
            kwargs: dict[str, Any] = {"device": self.config.device}
            if self.config.precision not in (None, "exact"):
                kwargs["precision"] = self.config.precision
            if src.text or src.vision:
                out[src.name] = Embedder.from_pretrained(text=src.text, vision=src.vision, **kwargs)
            else:
                out[src.name] = Embedder.from_pretrained(src.model, **kwargs)
        return out

    async def start(self) -> None:
        try:
            embedders = self.preloaded or await asyncio.to_thread(self._load_embedders)
            for name, emb in embedders.items():
                if emb.vision_encoder is not None and hasattr(emb.vision_encoder, "allow_urls"):
                    emb.vision_encoder.allow_urls = self.config.allow_url_fetch
                batcher = Batcher(emb, name, max_batch_tokens=self.config.max_batch_tokens,
                                  max_batch_texts=self.config.max_batch_texts,
                                  max_batch_images=self.config.max_batch_images, max_wait_ms=self.config.max_wait_ms,
                                  max_queue=self.config.max_queue,
                                  on_batch=lambda kind, n, name=name: self.metrics.batch_size.labels(name, kind)
                                  .observe(n))
                batcher.start()
                self.models[name] = ServedModel(name, emb, batcher)
            if self.config.index:
                await self._open_index(self.config.index)
            self.ready = True
            logger.info("serving %s", ", ".join(self.models))
        except Exception as exc:  # noqa: BLE001 - reported by /health and in the log; the process stays up
            self.load_error = f"{type(exc).__name__}: {exc}"
            logger.error("could not load the models: %s", self.load_error)

    async def _open_index(self, path: str) -> None:
        from ..index import ImageIndex

        first = next(iter(self.models.values()))
        self.index_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmembed-index")
        loop = asyncio.get_running_loop()
        # SQLite connections stay on the thread that opened them: every index call runs on this one thread.
        self.index = await loop.run_in_executor(self.index_executor, lambda: ImageIndex.open(path, first.embedder))
        self.index_model = first.name

    async def stop(self) -> None:
        self.draining = True
        for m in self.models.values():
            m.batcher.close()
        for m in self.models.values():
            await m.batcher.join()
        if self.index is not None and self.index_executor is not None:
            await asyncio.get_running_loop().run_in_executor(self.index_executor, self.index.close)
            self.index_executor.shutdown(wait=True)

    # -- helpers for the routes ------------------------------------------------------------------------------
    def model(self, name: str | None) -> ServedModel:
        if not self.ready:
            raise ApiError(503, "the server is loading its models" if not self.load_error else
                           f"the models failed to load: {self.load_error}", type_="server_error",
                           code="not_ready", headers={"Retry-After": "5"})
        if name is None:
            return next(iter(self.models.values()))
        try:
            return self.models[name]
        except KeyError:
            raise ApiError(404, f"the model {name!r} is not served here; served: {sorted(self.models)}",
                           param="model", code="model_not_found") from None

    async def run(self, request: Request, served: ServedModel, works: list[Work]) -> list[Any]:
        """Queue ``works`` and wait for their results, the request's deadline, or the client going away."""
        batcher = served.batcher
        futures = []
        try:
            for w in works:
                futures.append(batcher.submit(w))
        except QueueFullError as exc:
            for w in works:
                batcher.cancel(w)
            self.metrics.shed.labels(served.name).inc()
            raise ApiError(429, f"the server is busy ({exc}); retry later", type_="rate_limit_error",
                           code="queue_full", headers={"Retry-After": "1"}) from None
        except BatcherClosedError:
            for w in works:
                batcher.cancel(w)
            raise ApiError(503, "the server is shutting down", type_="server_error", code="draining") from None
        gathered = asyncio.ensure_future(asyncio.gather(*futures))
        gone = asyncio.ensure_future(_client_gone(request))
        try:
            done, _ = await asyncio.wait({gathered, gone}, timeout=self.config.request_timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if gathered in done:
            return gathered.result()
        reason = "disconnect" if gone in done else "deadline"
        for w in works:
            batcher.cancel(w)
        gathered.cancel()
        gathered.add_done_callback(_quiet)  # its CancelledError is expected: retrieve it, so nothing is logged
        self.metrics.cancelled.labels(served.name, reason).inc()
        if reason == "disconnect":
            raise ApiError(499, "the client closed the connection", code="client_closed")
        raise ApiError(503, f"the request did not finish within {self.config.request_timeout_s:g} s",
                       type_="server_error", code="deadline_exceeded", headers={"Retry-After": "1"})


def _quiet(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects (the body has been read, so the next ASGI message is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


# -- the request-level rules ---------------------------------------------------------------------------------
def _task(req: EmbeddingsRequest, emb: Any, default: str = "search_document") -> str | None:
    task = req.task
    if task is not None and task not in TASKS:
        raise ApiError(400, f"unknown task {task!r}; valid tasks are {list(TASKS)}", param="task", code="invalid_task")
    if req.input_type is not None:
        has_prefixes = bool(getattr(emb.text_encoder, "prefixes", None))
        mapped = (emb.query_task if req.input_type == "query" else "search_document") if has_prefixes else task
        if task is not None and mapped != task:
            raise ApiError(400, f"input_type {req.input_type!r} and task {task!r} disagree; send one of them",
                           param="input_type")
        return mapped
    return task if task is not None else default


def _check_texts(items: list[Item], param: str = "input", *, indexed: bool = True) -> None:
    """The library's text check per item (before queueing: a bad text must not fail the batch it would join), the
    error naming ``param[i]`` (or ``param`` alone for a lone query)."""
    for i, it in enumerate(items):
        if it.kind == "text":
            check_text(it.value, f"{param}[{i}]" if indexed else param)


def _image_error(result: ImageResult, positions: list[int]) -> ApiError | None:
    if not result.failures:
        return None
    f = result.failures[0]
    where = f"input[{positions[f.index]}]"
    return ApiError(400, f"{where}: the image could not be read: {f.reason}", param=where, code="invalid_image")


def _error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


# -- middleware ----------------------------------------------------------------------------------------------
class _Guard:
    """Pure ASGI middleware: draining (503), the in-flight cap (429), the API key (401), the body (read only after
    those checks, bounded in bytes, time and JSON values by :mod:`.body`; a route that takes none refuses one
    unread), and the request metrics. Every refusal is OpenAI-shaped."""

    def __init__(self, app: Any, state: ServerState) -> None:
        self.app = app
        self.state = state
        key = state.config.api_key
        self.key = f"Bearer {key}".encode() if key else None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = self.state
        path = scope.get("path", "")
        route = path if path in ROUTES else "other"
        status_box = {"status": 500}

        async def send_counted(message: dict) -> None:
            if message["type"] == "http.response.start":
                status_box["status"] = message["status"]
            await send(message)

        start, began = time.perf_counter(), time.monotonic()
        try:
            headers = dict(scope.get("headers") or [])
            refusal = self._refusal(scope, path, headers)
            if refusal is not None:
                await _error_response(refusal)(scope, receive, send_counted)
                return
            state.inflight += 1
            try:
                takes_body = scope.get("method") == "POST" and path not in KEYLESS
                if takes_body:
                    cfg = state.config
                    try:
                        body = await read_body(receive, headers, cap=cfg.max_body_bytes, idle_s=cfg.body_idle_s,
                                               budget_s=cfg.body_timeout_s, started=began)
                        if len(body) > INLINE_SCAN_BYTES:  # a scan of many MB takes 0.1-0.5 s: not on the loop
                            await asyncio.to_thread(check_json_size, body, cfg.max_json_values)
                        else:
                            check_json_size(body, cfg.max_json_values)
                    except ApiError as exc:
                        await _error_response(exc)(scope, receive, send_counted)
                        return
                    # the body is JSON whatever the client labelled it (curl -d)
                    scope = dict(scope, headers=[(k, v) for k, v in scope.get("headers") or []
                                                 if k != b"content-type"] + [(b"content-type", b"application/json")])
                    replayed = False

                    async def replay() -> dict:
                        nonlocal replayed
                        if not replayed:
                            replayed = True
                            return {"type": "http.request", "body": body, "more_body": False}
                        return await receive()

                    await self.app(scope, replay, send_counted)
                else:
                    await self.app(scope, receive, send_counted)
            finally:
                state.inflight -= 1
        finally:
            state.metrics.requests.labels(route, str(status_box["status"])).inc()
            state.metrics.latency.labels(route).observe(time.perf_counter() - start)

    def _refusal(self, scope: dict, path: str, headers: dict[bytes, bytes]) -> ApiError | None:
        state = self.state
        if path in KEYLESS or scope.get("method") != "POST":
            if declares_body(headers):  # never read: a keyless route would let anyone hold memory and a slot
                return ApiError(400, f"{scope.get('method')} {path} takes no request body", code="body_not_allowed",
                                headers=CLOSE)
            if path in KEYLESS:
                return None
        if self.key is not None:
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, self.key):
                return ApiError(401, "a valid API key is required: send 'Authorization: Bearer <key>'",
                                code="invalid_api_key", headers=CLOSE if declares_body(headers) else None)
        if state.draining:
            return ApiError(503, "the server is shutting down", type_="server_error", code="draining")
        if state.inflight >= state.config.max_inflight:
            return ApiError(429, f"the server is handling {state.inflight} requests already; retry later",
                            type_="rate_limit_error", code="too_many_requests", headers={"Retry-After": "1"})
        return None


# -- the app -------------------------------------------------------------------------------------------------
def create_app(config: ServeConfig | None = None, *, embedders: Mapping[str, Any] | None = None) -> FastAPI:
    """The server as an ASGI app. ``embedders`` (name -> :class:`~multimodal_embed.Embedder`) serves models that are
    already loaded instead of loading ``config.models``."""
    config = config or ServeConfig()
    if embedders:
        config.models = [ModelSource(served_name=n) for n in embedders]
    state = ServerState(config, embedders)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loading = asyncio.get_running_loop().create_task(state.start())
        if not config.load_in_background:
            await loading
            if state.load_error:
                raise RuntimeError(f"the models failed to load: {state.load_error}")
        app.state.loading = loading
        yield
        if not loading.done():
            loading.cancel()
        await state.stop()

    app = FastAPI(title="multimodal-embed", version=_version(), lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.mmembed = state

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        message = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            message, param = "the request body is not valid JSON", None
        elif first.get("type") == "extra_forbidden":  # as OpenAI: a misspelt field is named, never ignored
            known = sorted(_fields(request))
            takes = f"; this route takes {', '.join(known)}" if known else ""
            return _error_response(ApiError(400, f"unknown field {param!r}{takes}", param=param,
                                            code="unknown_field"))
        return _error_response(ApiError(400, f"{param + ': ' if param else ''}{message}", param=param))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return _error_response(ApiError(exc.status_code, str(exc.detail), code=code))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.error("unhandled error on %s", request.url.path, exc_info=exc)
        return _error_response(ApiError(500, "internal error (see the server log)", type_="server_error"))

    @app.post("/v1/embeddings")
    async def embeddings(req: EmbeddingsRequest, request: Request) -> JSONResponse:
        from .aliases import resolve
        from .chat import request_items

        served, default_task, answer_name = resolve(state, req.model)
        emb = served.embedder
        items = request_items(req, state.limits)
        n_images = sum(it.kind == "image" for it in items)
        task = _task(req, emb, default_task) if n_images < len(items) else None
        try:
            dim = emb.check_dimensionality(req.dimensions)
        except MultimodalEmbedError as exc:
            raise ApiError(400, str(exc), param="dimensions", code="invalid_dimensions") from None
        mode = long_text_mode(state.config, req.long_text, req.truncate)
        vectors, tokens = await embed_items(state, request, served, items, task, dim, mode, "input")
        data = [{"object": "embedding", "index": i, "embedding": encode(v, req.encoding_format)}
                for i, v in enumerate(vectors)]
        return JSONResponse({"object": "list", "data": data, "model": answer_name,
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "images": n_images}})

    @app.post("/v1/search")
    async def search(req: SearchRequest, request: Request) -> JSONResponse:
        if not state.ready:
            state.model(None)
        if state.index is None:
            raise ApiError(404, "this server has no index; start it with --index PATH", code="no_index")
        served = state.model(req.model or state.index_model)
        if served.name != state.index_model:
            raise ApiError(400, f"the index was built with {state.index_model!r}, not {served.name!r}",
                           param="model", code="model_mismatch")
        emb = served.embedder
        q = req.query
        if isinstance(q, str):
            item = text_item(q, "query")
        elif isinstance(q, dict):
            item = parse_input([q], modality=None, limits=state.limits, param="query")[0]
        else:
            raise ApiError(400, "query must be a text or an image_url content part", param="query")
        if item.kind == "text":
            _check_texts([item], param="query", indexed=False)
            n = (await count_tokens(emb, [item.value], emb.query_task))[0]
            work = Work("text", [item.value], cost=min(n, emb.max_text_length or n), options=(emb.query_task, None,
                                                                                              "truncate"))
        else:
            work = Work("image", [item.value], cost=1)
        (result,) = await state.run(request, served, [work])
        if isinstance(result, ImageResult):
            error = _image_error(result, [0])
            if error is not None:
                raise ApiError(400, error.message.replace("input[0]", "query"), param="query", code="invalid_image")
        vector = result.vectors[0]
        hits = await asyncio.get_running_loop().run_in_executor(
            state.index_executor, lambda: _search(state.index, vector, req))
        return JSONResponse({"object": "list", "model": served.name, "data": hits})

    @app.post("/v1/classify")
    async def classify(req: ClassifyRequest, request: Request) -> JSONResponse:
        from ..zeroshot import check_labels, resolve_templates

        served = state.model(req.model)
        emb = served.embedder
        if emb.text_encoder is None or emb.vision_encoder is None:
            raise ApiError(400, f"the model {served.name!r} needs text and image towers to classify", param="model")
        if len(req.labels) > state.config.max_labels:
            raise ApiError(400, f"{len(req.labels)} labels; at most {state.config.max_labels} per request",
                           param="labels", code="too_many_labels")
        try:
            labels = check_labels(req.labels)
            templates = resolve_templates(req.templates)
        except MultimodalEmbedError as exc:
            raise ApiError(400, str(exc), param="labels" if "label" in str(exc) else "templates") from None
        for i, lab in enumerate(labels):  # embedded once per template: a long label would be multiplied
            if len(lab) > MAX_LABEL_CHARS:
                raise ApiError(400, f"labels[{i}]: {len(lab)} characters; a label has at most {MAX_LABEL_CHARS}",
                               param=f"labels[{i}]", code="invalid_input")
        _check_texts([Item("text", lab) for lab in labels], param="labels")
        items = parse_input(req.images, modality="image", limits=state.limits, param="images")
        key = (served.name, tuple(labels), templates)
        classifier = state.classifiers.get(key)
        known: dict[str, np.ndarray] = {}  # label vectors embedded before (taken now: the LRU may drop them later)
        new: list[str] = []
        if classifier is None:
            for lab in labels:
                vec = state.label_vectors.get((served.name, templates, lab))
                if vec is None:
                    new.append(lab)
                else:
                    known[lab] = vec
        else:
            state.classifiers.move_to_end(key)
        prompts = [t.format(lab) for lab in new for t in templates]
        if len(prompts) > state.limits.max_items:
            raise ApiError(400, f"{len(new)} labels not embedded before x {len(templates)} templates = "
                                f"{len(prompts)} label prompts to embed; at most {state.limits.max_items} per "
                                f"request (send fewer new labels, or fewer templates: \"simple\" or \"none\")",
                           param="labels", code="too_many_labels")
        label_works = await _label_works(state, emb, prompts)
        image_work = Work("image", [it.value for it in items], cost=len(items))
        *label_results, result = await state.run(request, served, [*label_works, image_work])
        if classifier is None:
            classifier = _classifier(state, served, labels, templates, known, new, label_results)
        preds = classifier.predict_embeddings(result.vectors, min(req.top_k, len(labels))) if len(result.vectors) \
            else []
        out: list[dict[str, Any]] = [{"index": i} for i in range(len(items))]
        for pos, pred in zip(result.indices, preds):
            out[pos]["predictions"] = [{"label": p.label, "probability": p.probability, "cosine": p.cosine}
                                       for p in pred]
        for f in result.failures:
            out[f.index]["error"] = f"images[{f.index}]: the image could not be read: {f.reason}"
        state.metrics.images.labels(served.name).inc(len(result.indices))
        return JSONResponse({"object": "list", "model": served.name, "data": out})

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        from .aliases import model_entries

        state.model(None)
        mode = long_text_mode(state.config)
        return JSONResponse({"object": "list", "data": [e for m in state.models.values()
                                                        for e in model_entries(m, state.created, mode)]})

    @app.get("/health")
    async def health() -> JSONResponse:
        if state.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        if not state.ready:
            status = "failed" if state.load_error else "loading"
            return JSONResponse({"status": status, "error": state.load_error}, status_code=503,
                                headers={"Retry-After": "5"})
        return await _health(state)

    @app.get("/metrics")
    async def metrics() -> Response:
        for m in state.models.values():
            state.metrics.queue_depth.labels(m.name).set(m.batcher.queued_items)
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    app.add_middleware(_Guard, state=state)
    from .cohere import add_cohere_routes

    add_cohere_routes(app, state)  # after the guard: its error-shape middleware wraps the guard's refusals too
    return app


def _fields(request: Request) -> list[str]:
    """The body fields the request's route takes (from its pydantic model)."""
    field = getattr(request.scope.get("route"), "body_field", None)
    body = getattr(getattr(field, "field_info", None), "annotation", None)
    return list(getattr(body, "model_fields", {}))


def _search(index: Any, vector: np.ndarray, req: SearchRequest) -> list[dict[str, Any]]:
    from ..imagefiles import utf8_text

    hits = index.search(vector, req.top_k, min_score=req.min_score, path_filter=req.filter, rescore=req.rescore)
    return [{"id": h.id, "path": utf8_text(h.path), "score": h.score, "width": h.width,
             "height": h.height, "sha256": h.sha256} for h in hits]


async def _label_works(state: ServerState, emb: Any, prompts: list[str]) -> list[Work]:
    """Zero-shot label prompts as queued text work like any other (the query task, truncated as the library does),
    in pieces of at most one batch, so they count against the queue, the token budget and the deadline."""
    if not prompts:
        return []
    counts = await count_tokens(emb, prompts, emb.query_task)
    limit = emb.max_text_length
    step = state.config.max_batch_texts
    return [Work("text", prompts[i:i + step], cost=sum(min(n, limit or n) for n in counts[i:i + step]),
                 options=(emb.query_task, None, "truncate")) for i in range(0, len(prompts), step)]


def _classifier(state: ServerState, served: ServedModel, labels: list[str], templates: tuple[str, ...],
                known: dict[str, np.ndarray], new: list[str], results: list[TextResult]) -> Any:
    """The zero-shot classifier of ``labels``: the ``known`` label embeddings, and those of the ``new`` labels from
    ``results`` (their queued prompts), which join the server's label cache. Both caches are LRU-bounded."""
    from ..zeroshot import average_templates

    if new:
        per_class = average_templates(np.concatenate([r.vectors for r in results]), len(new), len(templates))
        known.update(zip(new, per_class))
    cache = state.label_vectors
    for lab in labels:
        cache[(served.name, templates, lab)] = known[lab]
        cache.move_to_end((served.name, templates, lab))
    while len(cache) > LABEL_CACHE:
        cache.popitem(last=False)
    clf = _embedded_classifier()(served.embedder, labels, templates, np.stack([known[lab] for lab in labels]))
    state.classifiers[(served.name, tuple(labels), templates)] = clf
    while len(state.classifiers) > 16:
        state.classifiers.popitem(last=False)
    return clf


@functools.cache
def _embedded_classifier() -> type:
    from ..zeroshot import ZeroShotClassifier

    class EmbeddedLabels(ZeroShotClassifier):
        """The library's classifier (its scoring, its predictions) over label embeddings computed through the
        server's queue instead of by the classifier itself."""

        def __init__(self, embedder: Any, labels: list[str], templates: tuple[str, ...], vectors: np.ndarray):
            self._given = dict(zip(labels, vectors))
            super().__init__(embedder, labels, list(templates), show_progress=False)

        def embed_labels(self, labels: Any) -> np.ndarray:
            return np.stack([self._given[lab] for lab in labels]).astype(np.float32)

    return EmbeddedLabels


async def _health(state: ServerState) -> JSONResponse:
    """Per model: a real forward pass on a tiny input, on the model's own thread (the only thread that drives the
    model), when that thread is idle; while it runs a batch, the batch is the sign of life, and one running longer
    than the request deadline makes the model unhealthy (stuck). The answer is reused for a second, so a flood of
    probes costs one pass."""
    now = time.monotonic()
    if state.health_cache is not None and now - state.health_cache[0] < 1.0:
        body = state.health_cache[1]
        return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)
    limit = state.config.request_timeout_s
    result: dict[str, Any] = {}
    async with state.health_lock:
        for m in state.models.values():
            batcher = m.batcher
            try:
                if batcher.busy_for is None:
                    result[m.name] = await asyncio.wait_for(
                        batcher.run_in_model_thread(functools.partial(_probe, m.embedder)), timeout=HEALTH_PROBE_S)
                    continue
            except TimeoutError:  # a batch got in first and is still running: judged below, as a busy thread
                pass
            except Exception as exc:  # noqa: BLE001 - the probe failed: unhealthy, said why
                result[m.name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                continue
            busy = batcher.busy_for or 0.0
            result[m.name] = {"ok": busy < limit, "busy_s": round(busy, 1)}
    status = "ok" if all(r["ok"] for r in result.values()) else "unhealthy"
    body = {"status": status, "models": result, "threads": threading.active_count(), "pid": os.getpid()}
    state.health_cache = (time.monotonic(), body)
    return JSONResponse(body, status_code=200 if status == "ok" else 503)


def _probe(emb: Any) -> dict[str, Any]:
    t0 = time.perf_counter()
    if emb.text_encoder is not None:
        v = emb.embed_text(["health"], show_progress=False)
    else:
        v = emb.embed_images([np.zeros((8, 8, 3), np.uint8)], show_progress=False)
    ok = v.shape == (1, emb.dim) and bool(np.isfinite(v).all())
    return {"ok": ok, "ms": round(1000 * (time.perf_counter() - t0), 1)}


def _version() -> str:
    from .. import __version__

    return __version__
