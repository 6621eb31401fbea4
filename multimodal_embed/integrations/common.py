"""What the framework adapters share: vectors from a model name, an :class:`~multimodal_embed.Embedder`, or the URL
of an ``mmembed serve`` service, with the same two verbs.

Every adapter holds one backend (:func:`resolve_backend`) and calls :meth:`embed_text` / :meth:`embed_images` once
per batch the framework hands it: the whole batch goes to the model (or the service) in one call.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from ..encoders import ImageFailure, truncate_unit
from ..errors import ImageDecodeError, InvalidInputError, MissingDependencyError, MultimodalEmbedError
from ..serving.cli import API_KEY_ENV  # the variable mmembed serve reads its key from, and clients send theirs

logger = logging.getLogger(__name__)

QUERY_TASK = "search_query"
DOCUMENT_TASK = "search_document"


class RemoteEmbedError(MultimodalEmbedError, RuntimeError):
    """An ``mmembed serve`` service refused a request or could not be reached (the message says which and why)."""

    def __init__(self, message: str, *, status: int | None = None, param: str | None = None,
                 code: str | None = None):
        self.status, self.param, self.code = status, param, code
        super().__init__(message)


class ImageBatch:
    """The images of one call that could be embedded: ``vectors[k]`` belongs to input ``indices[k]``;
    ``failures`` names every other input and why."""

    def __init__(self, vectors: np.ndarray, indices: list[int], failures: list[ImageFailure]):
        self.vectors, self.indices, self.failures = vectors, indices, failures


class Backend(Protocol):
    """Where an adapter's vectors come from."""

    def embed_text(self, texts: Sequence[str], task: str | None) -> np.ndarray: ...

    def embed_images(self, images: Sequence[Any]) -> ImageBatch: ...

    @property
    def dim(self) -> int: ...

    def config(self) -> dict[str, Any]: ...


def raise_failures(failures: Sequence[ImageFailure], labels: Sequence[Any] | None = None) -> None:
    """Raise :class:`ImageDecodeError` naming every failed image (with its id from ``labels`` when given)."""
    if not failures:
        return

    def name(f: ImageFailure) -> str:
        item = f.item if f.item.startswith(f"#{f.index} ") else f"#{f.index} {f.item}"
        return item + (f" (id {labels[f.index]!r})" if labels is not None else "")

    first, rest = failures[0], failures[1:]
    reason = first.reason + (f"; {len(rest)} more: " + "; ".join(f"{name(f)}: {f.reason}" for f in rest)
                             if rest else "")
    err = ImageDecodeError(name(first), reason)
    err.failures = list(failures)
    raise err


class LocalBackend:
    """An in-process :class:`~multimodal_embed.Embedder`."""

    def __init__(self, embedder: Any, *, dimensions: int | None = None, batch_size: int = 32,
                 model: str | None = None, options: Mapping[str, Any] | None = None):
        self.embedder = embedder
        self.dimensions = dimensions
        self.batch_size = batch_size
        self.model = model
        self.options = dict(options or {})
        if dimensions is not None:
            embedder.check_dimensionality(dimensions)  # texts and images alike, before anything is embedded

    @property
    def dim(self) -> int:
        return int(self.dimensions or self.embedder.dim)

    def embed_text(self, texts: Sequence[str], task: str | None) -> np.ndarray:
        return self.embedder.embed_text(list(texts), task=task, dimensionality=self.dimensions,
                                        batch_size=self.batch_size, show_progress=False)

    def embed_images(self, images: Sequence[Any]) -> ImageBatch:
        res = self.embedder.embed_images_with_errors(list(images), batch_size=self.batch_size, show_progress=False)
        return ImageBatch(res.vectors if self.dimensions is None else truncate_unit(res.vectors, self.dimensions), list(res.indices), list(res.failures))

    def config(self) -> dict[str, Any]:
        """How to load the same model again: the name or folder it was loaded from (for an ``Embedder`` object,
        its registry name, or its towers' names)."""
        out: dict[str, Any] = {"model": self.model}
        if self.model is None:
            ident = self.embedder.identity()
            text, vision = ident.get("text") or {}, ident.get("vision") or {}
            out["model"] = ident.get("name") or text.get("name") or vision.get("name")
            if not ident.get("name") and text.get("name") and vision.get("name"):
                out["vision"] = vision["name"]
        return {**out, "dimensions": self.dimensions, "batch_size": self.batch_size, **self.options}


def image_part(item: Any) -> dict[str, Any]:
    """One image as an OpenAI-style content part: the file's own bytes in a data URL (so the service decodes
    exactly what a local :meth:`~multimodal_embed.Embedder.embed_images` would), arrays and PIL images as PNG,
    http(s) URLs as they are. A local file is read with :func:`~multimodal_embed.imagefiles.read_image_file` (a
    regular file only, to the loader's cap), a file object to the same cap."""
    from ..imagefiles import data_uri, read_image_file
    from ..images import URL_MAX_BYTES

    if isinstance(item, (str, os.PathLike)):
        text = os.fspath(item)
        if isinstance(text, str) and text.lower().startswith(("http://", "https://", "data:")):
            return {"type": "image_url", "image_url": {"url": text}}
        data = read_image_file(local_path(text), URL_MAX_BYTES)
    elif isinstance(item, (bytes, bytearray, memoryview)):
        data = bytes(item)
    elif hasattr(item, "read"):  # a binary file (LlamaIndex passes BytesIO)
        data = item.read(URL_MAX_BYTES + 1)
        if not isinstance(data, bytes):
            raise TypeError(f"{type(item).__name__}.read() returned {type(data).__name__}, not bytes")
        if len(data) > URL_MAX_BYTES:
            raise ValueError(f"the file object holds over {URL_MAX_BYTES} bytes, the most an image may be")
    else:
        from PIL import Image

        if isinstance(item, np.ndarray):
            item = Image.fromarray(item)
        if not isinstance(item, Image.Image):
            raise TypeError(f"unsupported image type {type(item).__name__}")
        import io

        buf = io.BytesIO()
        item.save(buf, format="PNG")
        data = buf.getvalue()
    return {"type": "image_url", "image_url": {"url": data_uri(data)}}


def local_path(item: Any) -> Any:
    """A ``file:`` URL as its local path (LanceDB and LangChain pass image URIs that way); anything else as is."""
    from ..imagefiles import file_url_path

    if isinstance(item, str):
        try:
            path = file_url_path(item)
        except ValueError:  # another host's file: URL: the loader names it as this item's error
            return item
        if path is not None:
            return path
    return item


MAX_TEXTS_PER_REQUEST = 2048  # mmembed serve's (and OpenAI's) cap on inputs per request
MAX_IMAGES_PER_REQUEST = 64  # mmembed serve's cap on images per request
MAX_REQUEST_BYTES = 16 * 1024 * 1024  # image data per request (the service's default body cap is 32 MB)


class RemoteBackend:
    """An ``mmembed serve`` service (OpenAI-compatible ``POST {base_url}/embeddings``): one request per batch.

    The API key is ``api_key`` or, when that is None, the environment variable ``api_key_env_var``
    (``MMEMBED_API_KEY``); :meth:`config` records the variable's name, never the key."""

    def __init__(self, base_url: str, *, model: str | None = None, dimensions: int | None = None,
                 api_key: str | None = None, api_key_env_var: str = API_KEY_ENV, timeout: float = 60.0,
                 client: Any = None):
        try:
            import httpx
        except ImportError as exc:  # pragma: no cover - httpx comes with gradio
            raise MissingDependencyError("base_url= needs httpx: pip install httpx") from exc
        if not isinstance(base_url, str) or not base_url.lower().startswith(("http://", "https://")):
            raise InvalidInputError(f"base_url must be an http(s) URL, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.dimensions = dimensions
        self.timeout = timeout
        self.api_key_env_var = api_key_env_var
        if api_key is None and api_key_env_var:
            api_key = os.environ.get(api_key_env_var) or None  # a stored configuration names the variable only
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = client or httpx.Client(timeout=timeout, headers=headers)
        self._dim: int | None = dimensions

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = int(self.dimensions or self.embed_text(["dimension probe"], None).shape[1])
        return self._dim

    def _post(self, inputs: list[Any], **fields: Any) -> np.ndarray:
        import httpx

        body: dict[str, Any] = {"input": inputs, "encoding_format": "base64"}
        if self.model is not None:
            body["model"] = self.model
        if self.dimensions is not None:
            body["dimensions"] = self.dimensions
        body.update({k: v for k, v in fields.items() if v is not None})
        url = f"{self.base_url}/embeddings"
        try:
            resp = self._client.post(url, json=body)
        except httpx.HTTPError as exc:
            raise RemoteEmbedError(f"cannot reach {url}: {exc}") from exc
        if resp.status_code != 200:
            try:
                err = resp.json().get("error") or {}
            except (ValueError, AttributeError):
                err = {}
            message = err.get("message") or resp.text[:500]
            raise RemoteEmbedError(f"{url} answered {resp.status_code}: {message}", status=resp.status_code,
                                   param=err.get("param"), code=err.get("code"))
        try:
            data = sorted(resp.json()["data"], key=lambda d: d["index"])
            rows = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") if isinstance(d["embedding"], str)
                    else np.asarray(d["embedding"], dtype=np.float32) for d in data]
        except (ValueError, KeyError, TypeError) as exc:
            raise RemoteEmbedError(f"{url} sent a response that is not an embeddings list: {exc}") from exc
        if len(rows) != len(inputs):
            raise RemoteEmbedError(f"{url} sent {len(rows)} embeddings for {len(inputs)} inputs")
        return np.stack(rows).astype(np.float32) if rows else np.zeros((0, self._dim or 0), np.float32)

    def embed_text(self, texts: Sequence[str], task: str | None) -> np.ndarray:
        """One request per :data:`MAX_TEXTS_PER_REQUEST` texts; long texts are truncated, as a local model does."""
        texts = list(texts)
        out = [self._post(texts[i:i + MAX_TEXTS_PER_REQUEST], task=task, truncate=True)
               for i in range(0, len(texts), MAX_TEXTS_PER_REQUEST)]
        if not out:
            return np.zeros((0, self._dim or 0), np.float32)
        vectors = np.concatenate(out)
        self._dim = vectors.shape[1]
        return vectors

    def embed_images(self, images: Sequence[Any]) -> ImageBatch:
        """One request per :data:`MAX_IMAGES_PER_REQUEST` images (the service's cap) or 16 MiB of data. An image
        that cannot be read here, or that the service refuses (its error's ``param`` names ``input[i]``), is
        reported as a failure, and the rest of its request is sent again."""
        from ..images import describe

        images = list(images)
        failures: list[ImageFailure] = []
        parts: dict[int, dict[str, Any]] = {}
        for i, item in enumerate(images):
            try:
                parts[i] = image_part(item)
            except (OSError, TypeError, ValueError) as exc:
                failures.append(ImageFailure(i, describe(item, i), str(exc)))
        chunks: list[list[int]] = [[]]
        size = 0
        for i in sorted(parts):
            n = len(parts[i]["image_url"]["url"])
            if chunks[-1] and (len(chunks[-1]) >= MAX_IMAGES_PER_REQUEST or size + n > MAX_REQUEST_BYTES):
                chunks.append([])
                size = 0
            chunks[-1].append(i)
            size += n
        rows: list[np.ndarray] = []
        indices: list[int] = []
        for chunk in chunks:
            while chunk:
                try:
                    vectors = self._post([parts[i] for i in chunk])
                except RemoteEmbedError as exc:
                    bad = _param_index(exc.param)
                    if exc.status is None or exc.status >= 500 or bad is None or bad >= len(chunk):
                        raise
                    i = chunk.pop(bad)
                    failures.append(ImageFailure(i, describe(images[i], i), str(exc)))
                    continue
                self._dim = vectors.shape[1]
                rows.append(vectors)
                indices.extend(chunk)
                break
        failures.sort(key=lambda f: f.index)
        vectors = np.concatenate(rows) if rows else np.zeros((0, self._dim or 0), np.float32)
        return ImageBatch(vectors, indices, failures)

    def config(self) -> dict[str, Any]:
        return {"base_url": self.base_url, "model": self.model, "dimensions": self.dimensions,
                "timeout": self.timeout, "api_key_env_var": self.api_key_env_var}


def _param_index(param: str | None) -> int | None:
    """``input[3]`` / ``input[3].image_url`` -> 3."""
    if not param or not param.startswith("input["):
        return None
    try:
        return int(param[len("input["):].split("]", 1)[0])
    except ValueError:
        return None


_CACHE: dict[str, Any] = {}
_CACHE_LOCK = threading.Lock()


def load_embedder(model: str | os.PathLike, options: Mapping[str, Any]) -> Any:
    """``Embedder.from_pretrained(model, **options)``, loaded once per process for the same arguments (so an
    adapter rebuilt from its configuration, as Chroma and LanceDB do when a collection is reopened, reuses it)."""
    from ..embedder import Embedder

    key = json.dumps([os.fspath(model), dict(options)], sort_keys=True, default=str)
    with _CACHE_LOCK:
        emb = _CACHE.get(key)
        if emb is None:
            emb = _CACHE[key] = Embedder.from_pretrained(model, **dict(options))
        return emb


def remember_embedder(model: str, options: Mapping[str, Any], embedder: Any) -> None:
    """Make :func:`load_embedder` answer ``embedder`` for ``(model, options)`` in this process: an adapter that
    is rebuilt from its configuration (LanceDB does so on every ``add`` and ``search``) then keeps using the
    ``Embedder`` object it was given."""
    key = json.dumps([os.fspath(model), dict(options)], sort_keys=True, default=str)
    with _CACHE_LOCK:
        _CACHE[key] = embedder


def resolve_backend(model: str | os.PathLike | None = None, *, embedder: Any = None, base_url: str | None = None,
                    dimensions: int | None = None, batch_size: int = 32, api_key: str | None = None,
                    api_key_env_var: str = API_KEY_ENV, timeout: float = 60.0,
                    **embedder_options: Any) -> LocalBackend | RemoteBackend:
    """The backend for exactly one of ``embedder=``, ``base_url=`` (``model`` then names the service's model) or
    ``model=`` (a name or folder, loaded with ``Embedder.from_pretrained(model, **embedder_options)``: ``device``,
    ``dtype``, ``precision``, ...). A service's key is ``api_key`` or the environment variable ``api_key_env_var``."""
    if embedder is not None and base_url is not None:
        raise InvalidInputError("pass embedder= or base_url=, not both")
    if base_url is not None:
        if embedder_options:
            raise InvalidInputError(f"options for a local model cannot be sent to {base_url}: "
                                    f"{sorted(embedder_options)}")
        return RemoteBackend(base_url, model=None if model is None else os.fspath(model), dimensions=dimensions,
                             api_key=api_key, api_key_env_var=api_key_env_var, timeout=timeout)
    if embedder is not None:
        if model is not None or embedder_options:
            raise InvalidInputError("pass embedder= alone, or model= with its options, not both")
        return LocalBackend(embedder, dimensions=dimensions, batch_size=batch_size)
    if model is None:
        raise InvalidInputError("pass model= (a model name or folder), embedder= or base_url=")
    return LocalBackend(load_embedder(model, embedder_options), dimensions=dimensions, batch_size=batch_size,
                        model=os.fspath(model), options=embedder_options)


class Adapter:
    """The two sides of retrieval over one backend: documents and queries embedded with their task prefixes
    (nomic's ``search_document`` / ``search_query``; models without prefixes ignore them), images as they are."""

    def __init__(self, backend: LocalBackend | RemoteBackend, *, query_task: str | None = QUERY_TASK,
                 document_task: str | None = DOCUMENT_TASK):
        self.backend = backend
        self.query_task = query_task
        self.document_task = document_task

    def documents(self, texts: Sequence[str]) -> np.ndarray:
        return self.backend.embed_text(_texts(texts), self.document_task)

    def queries(self, texts: Sequence[str]) -> np.ndarray:
        return self.backend.embed_text(_texts(texts), self.query_task)

    def images(self, images: Sequence[Any], labels: Sequence[Any] | None = None) -> np.ndarray:
        """One row per image, or :class:`ImageDecodeError` naming every image that could not be used."""
        batch = self.images_with_errors(images)
        raise_failures(batch.failures, labels)
        return batch.vectors

    def images_with_errors(self, images: Sequence[Any]) -> ImageBatch:
        """Paths, ``file:`` URLs, http(s) URLs, bytes, file objects, PIL images or arrays."""
        return self.backend.embed_images([local_path(x) for x in images])

    def config(self) -> dict[str, Any]:
        return {**self.backend.config(), "query_task": self.query_task, "document_task": self.document_task}


def _texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise InvalidInputError("expected a list of texts, got one string")
    return list(texts)


def make_adapter(model: str | os.PathLike | None = None, *, embedder: Any = None, base_url: str | None = None,
                 query_task: str | None = QUERY_TASK, document_task: str | None = DOCUMENT_TASK,
                 **options: Any) -> Adapter:
    """:class:`Adapter` over :func:`resolve_backend` (``options``: ``dimensions``, ``batch_size``, ``api_key``,
    ``timeout`` and the local model's ``Embedder.from_pretrained`` options)."""
    return Adapter(resolve_backend(model, embedder=embedder, base_url=base_url, **options),
                   query_task=query_task, document_task=document_task)
