"""The ASGI app: OpenAI-compatible ``/v1/embeddings`` for texts and images, ``/v1/search``, ``/v1/classify``,
``/v1/models``, ``/health`` and ``/metrics``.

``create_app(ServeConfig(...))`` returns a FastAPI app for any ASGI server; ``mmembed serve`` runs it on uvicorn.
Models load in the background at start-up (``/health`` answers 503 until they are ready); every request's work
goes through the model's :class:`~multimodal_embed.serving.batcher.Batcher`.
"""

from __future__ import annotations

import asyncio
import base64
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

from ..encoders import truncate_unit
from ..errors import MultimodalEmbedError
from .batcher import Batcher, BatcherClosedError, ImageResult, QueueFullError, TextResult, Work
from .inputs import Item, Limits, parse_input
from .metrics import Metrics
from .schemas import ApiError, ClassifyRequest, EmbeddingsRequest, SearchRequest

logger = logging.getLogger(__name__)

BUILTIN_MODEL = "minilm-efficientnet-lite0"
TASKS = ("search_query", "search_document", "clustering", "classification")
INLINE_TOKENIZE_CHARS = 20_000  # request texts up to this size are counted on the event loop (well under 1 ms)
ROUTES = ("/v1/embeddings", "/v1/search", "/v1/classify", "/v1/models", "/health", "/metrics")


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
    truncate: bool = False  # cut over-long texts instead of refusing them
    max_body_bytes: int = 32 * 1024 * 1024
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
        self.classifiers: OrderedDict[tuple, Any] = OrderedDict()
        self.health_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmembed-health")
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
        self.health_executor.shutdown(wait=False)

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
        self.metrics.cancelled.labels(served.name, reason).inc()
        if reason == "disconnect":
            raise ApiError(499, "the client closed the connection", code="client_closed")
        raise ApiError(503, f"the request did not finish within {self.config.request_timeout_s:g} s",
                       type_="server_error", code="deadline_exceeded", headers={"Retry-After": "1"})


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects (the body has been read, so the next ASGI message is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


# -- the request-level rules ---------------------------------------------------------------------------------
def _task(req: EmbeddingsRequest, emb: Any) -> str | None:
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
    return task if task is not None else "search_document"


def _check_texts(items: list[Item]) -> None:
    from ..text import check_texts

    for i, it in enumerate(items):
        if it.kind == "text":
            try:
                check_texts([it.value])
            except MultimodalEmbedError as exc:
                raise ApiError(400, f"input[{i}]: {str(exc).removeprefix('texts[0] ')}", param=f"input[{i}]",
                               code="invalid_input") from None


def _encode(vec: np.ndarray, fmt: str) -> Any:
    if fmt == "base64":
        return base64.b64encode(np.ascontiguousarray(vec, dtype="<f4").tobytes()).decode("ascii")
    return vec.astype(np.float32).tolist()


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
    """Pure ASGI middleware: draining (503), the in-flight cap (429), the API key (401), the body cap (413, the
    body read at most once and never past the cap), and the request metrics. Every refusal is OpenAI-shaped."""

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

        start = time.perf_counter()
        try:
            refusal = self._refusal(scope, path)
            if refusal is not None:
                await _error_response(refusal)(scope, receive, send_counted)
                return
            state.inflight += 1
            try:
                body = await self._read_body(scope, receive)
                if isinstance(body, ApiError):
                    await _error_response(body)(scope, receive, send_counted)
                    return
                if scope.get("method") == "POST":  # the body is JSON whatever the client labelled it (curl -d)
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
            finally:
                state.inflight -= 1
        finally:
            state.metrics.requests.labels(route, str(status_box["status"])).inc()
            state.metrics.latency.labels(route).observe(time.perf_counter() - start)

    def _refusal(self, scope: dict, path: str) -> ApiError | None:
        state = self.state
        if path == "/health":
            return None
        if self.key is not None:
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.key):
                return ApiError(401, "a valid API key is required: send 'Authorization: Bearer <key>'",
                                code="invalid_api_key")
        if state.draining:
            return ApiError(503, "the server is shutting down", type_="server_error", code="draining")
        if state.inflight >= state.config.max_inflight:
            return ApiError(429, f"the server is handling {state.inflight} requests already; retry later",
                            type_="rate_limit_error", code="too_many_requests", headers={"Retry-After": "1"})
        return None

    async def _read_body(self, scope: dict, receive: Any) -> bytes | ApiError:
        cap = self.state.config.max_body_bytes
        too_big = ApiError(413, f"the request body is larger than {cap} bytes", code="body_too_large")
        headers = dict(scope.get("headers") or [])
        try:
            if int(headers.get(b"content-length", b"0")) > cap:
                return too_big
        except ValueError:
            return ApiError(400, "bad Content-Length header")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return ApiError(499, "the client closed the connection", code="client_closed")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > cap:
                return too_big
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


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
        served = state.model(req.model)
        emb = served.embedder
        items = parse_input(req.input, modality=req.modality, limits=state.limits)
        texts = [(i, it.value) for i, it in enumerate(items) if it.kind == "text"]
        images = [(i, it.value) for i, it in enumerate(items) if it.kind == "image"]
        for kind, have, wanted in (("text", emb.text_encoder, texts), ("image", emb.vision_encoder, images)):
            if wanted and have is None:
                raise ApiError(400, f"the model {served.name!r} has no {kind} tower", param="input",
                               code=f"no_{kind}_tower")
        task = _task(req, emb) if texts else None
        try:
            dim = emb.check_dimensionality(req.dimensions)
        except MultimodalEmbedError as exc:
            raise ApiError(400, str(exc), param="dimensions", code="invalid_dimensions") from None
        _check_texts(items)
        works: list[Work] = []
        tokens = 0
        if texts:
            strings = [t for _, t in texts]
            if sum(map(len, strings)) <= INLINE_TOKENIZE_CHARS:  # a thread hop costs more than tokenizing this
                counts = emb.count_tokens(strings, task)
            else:
                counts = await asyncio.to_thread(emb.count_tokens, strings, task)
            limit = emb.max_text_length
            truncate = state.config.truncate if req.truncate is None else req.truncate
            for (i, _), n in zip(texts, counts):
                if limit and n > limit and not truncate:
                    raise ApiError(400, f"input[{i}] has {n} tokens, more than the model's {limit}; shorten it or "
                                        f"send \"truncate\": true", param=f"input[{i}]", code="context_length_exceeded")
            used = [min(n, limit) if limit else n for n in counts]
            tokens = sum(used)
            works.append(Work("text", [t for _, t in texts], cost=tokens,
                              options=(task, None if dim == emb.dim else dim, "truncate")))
        if images:
            works.append(Work("image", [v for _, v in images], cost=len(images)))
        results = await state.run(request, served, works)
        vectors: list[np.ndarray | None] = [None] * len(items)
        for work, result in zip(works, results):
            if isinstance(result, TextResult):
                for (i, _), v in zip(texts, result.vectors):
                    vectors[i] = v
            elif isinstance(result, ImageResult):
                error = _image_error(result, [i for i, _ in images])
                if error is not None:
                    raise error
                for pos, v in zip(result.indices, truncate_unit(result.vectors, dim)):
                    vectors[images[pos][0]] = v
        state.metrics.tokens.labels(served.name).inc(tokens)
        state.metrics.images.labels(served.name).inc(len(images))
        data = [{"object": "embedding", "index": i, "embedding": _encode(v, req.encoding_format)}
                for i, v in enumerate(vectors)]
        return JSONResponse({"object": "list", "data": data, "model": served.name,
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "images": len(images)}})

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
            item = Item("text", q)
        elif isinstance(q, dict):
            item = parse_input([q], modality=None, limits=state.limits, param="query")[0]
        else:
            raise ApiError(400, "query must be a text or an image_url content part", param="query")
        if item.kind == "text":
            _check_texts([item])
            n = (await asyncio.to_thread(emb.count_tokens, [item.value], emb.query_task))[0]
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
        items = parse_input(req.images, modality="image", limits=state.limits, param="images")
        classifier = await _classifier(state, served, tuple(labels), templates)
        (result,) = await state.run(request, served, [Work("image", [it.value for it in items], cost=len(items))])
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
        state.model(None)
        return JSONResponse({"object": "list", "data": [m.describe(state.created) for m in state.models.values()]})

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
    return app


def _search(index: Any, vector: np.ndarray, req: SearchRequest) -> list[dict[str, Any]]:
    from ..imagefiles import utf8_text

    hits = index.search(vector, req.top_k, min_score=req.min_score, path_filter=req.filter, rescore=req.rescore)
    return [{"id": h.id, "path": utf8_text(h.path), "score": h.score, "width": h.width,
             "height": h.height, "sha256": h.sha256} for h in hits]


async def _classifier(state: ServerState, served: ServedModel, labels: tuple[str, ...], templates: tuple[str, ...]
                      ) -> Any:
    from ..zeroshot import ZeroShotClassifier

    key = (served.name, labels, templates)
    if key in state.classifiers:
        state.classifiers.move_to_end(key)
        return state.classifiers[key]
    clf = await served.batcher.run_in_model_thread(
        lambda: ZeroShotClassifier(served.embedder, list(labels), list(templates), show_progress=False))
    state.classifiers[key] = clf
    while len(state.classifiers) > 16:
        state.classifiers.popitem(last=False)
    return clf


async def _health(state: ServerState) -> JSONResponse:
    """A real forward pass per model on a tiny input, on its own thread (a long batch does not delay it); the
    answer is reused for a second so a flood of probes costs one pass."""
    now = time.monotonic()
    if state.health_cache is not None and now - state.health_cache[0] < 1.0:
        body = state.health_cache[1]
        return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)

    def probe() -> dict[str, Any]:
        out = {}
        for m in state.models.values():
            emb = m.embedder
            t0 = time.perf_counter()
            if emb.text_encoder is not None:
                v = emb.embed_text(["health"], show_progress=False)
            else:
                v = emb.embed_images([np.zeros((8, 8, 3), np.uint8)], show_progress=False)
            ok = v.shape == (1, emb.dim) and bool(np.isfinite(v).all())
            out[m.name] = {"ok": ok, "ms": round(1000 * (time.perf_counter() - t0), 1)}
        return out

    async with state.health_lock:
        try:
            result = await asyncio.wait_for(
                asyncio.get_running_loop().run_in_executor(state.health_executor, probe), timeout=30)
            status = "ok" if all(r["ok"] for r in result.values()) else "unhealthy"
        except Exception as exc:  # noqa: BLE001
            result, status = {"error": f"{type(exc).__name__}: {exc}"}, "unhealthy"
    body = {"status": status, "models": result, "threads": threading.active_count(), "pid": os.getpid()}
    state.health_cache = (time.monotonic(), body)
    return JSONResponse(body, status_code=200 if status == "ok" else 503)


def _version() -> str:
    from .. import __version__

    return __version__
