"""LanceDB: the embedding-registry function ``"multimodal-embed"`` (``pip install 'multimodal-embed[lancedb]'``).

Importing this module registers it; then a table's vector column fills itself on ``add`` and ``search`` embeds
the query (a string with the query prefix, or an image: a PIL image, bytes or a ``Path``):

>>> import multimodal_embed.integrations.lancedb  # registers "multimodal-embed"
>>> func = get_registry().get("multimodal-embed").create(model="minilm-efficientnet-lite0", source="image")
>>> class Photos(LanceModel):
...     path: str = func.SourceField()
...     vector: Vector(func.ndims()) = func.VectorField()
>>> tbl = lancedb.connect(folder).create_table("photos", schema=Photos); tbl.add([{"path": "cat.jpg"}])
>>> tbl.search("a cat").limit(3).to_list()
"""

from __future__ import annotations

import logging
import os
from typing import Any, Literal

import numpy as np

from ..errors import InvalidInputError, MissingDependencyError
from ..imagefiles import file_url_path, is_image_name
from .common import API_KEY_ENV, DOCUMENT_TASK, QUERY_TASK, Adapter, make_adapter, raise_failures, remember_embedder

try:
    import pyarrow as pa
    from lancedb.embeddings import EmbeddingFunction, register
    from pydantic import Field, PrivateAttr
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise MissingDependencyError("the LanceDB adapter needs lancedb: pip install 'multimodal-embed[lancedb]'") from exc

logger = logging.getLogger(__name__)

NAME = "multimodal-embed"
# base_url -> the api_key= given in this process: LanceDB rebuilds the function from the table's metadata on every
# add and search, and the key is never in that metadata; in memory only, for this process's own tables
_KEYS: dict[str, str] = {}


class _Shared:
    """Carries an ``Embedder`` through LanceDB's deep copy of the arguments unchanged."""

    def __init__(self, obj: Any):
        self.obj = obj

    def __deepcopy__(self, memo: dict) -> _Shared:
        return self


@register(NAME)
class MultimodalEmbedFunction(EmbeddingFunction):
    """Texts and images in one space for LanceDB tables.

    Fields (the table stores them, so reopening the table rebuilds the function): ``model`` (a name or folder;
    with ``base_url``, the service's model; ``name=`` is taken for it, as LanceDB's own functions call it),
    ``base_url`` (an ``mmembed serve`` service; its key is ``api_key=``, never stored, or the environment variable
    named by ``api_key_env_var``, ``MMEMBED_API_KEY``; a table reopened in another process sends data there only
    after ``get_registry().allow_endpoint(base_url)``), ``source``: what the source column holds (``"text"``,
    ``"image"`` -- paths, ``file:`` or http(s) URLs, or bytes -- or ``"auto"``: binary columns are images, and so is
    a string column whose every row names an image file (``cat.jpg``, ``file:///x/cat.png``), as LanceDB's open-clip
    function reads such a column; other strings are texts), ``query_task`` / ``document_task``, ``dimensions``,
    ``batch_size``, ``options``
    (``Embedder.from_pretrained`` options: ``device``, ``precision``, ...) and ``on_error``: ``"raise"`` (a bad
    image raises :class:`~multimodal_embed.ImageDecodeError` naming it) or ``"skip"`` (it is logged and its vector
    left empty, so ``table.add(rows, on_bad_vectors="drop")`` stores the good rows). ``create(embedder=emb)``
    uses an ``Embedder`` object (recorded by its model name). Each column batch LanceDB hands over is one model
    call; retries are off by default (``max_retries=0``): a bad image does not succeed on a second try.
    """

    model: str | None = None
    base_url: str | None = None
    source: Literal["auto", "text", "image"] = "auto"
    query_task: str | None = QUERY_TASK
    document_task: str | None = DOCUMENT_TASK
    dimensions: int | None = None
    batch_size: int = 32
    timeout: float = 60.0
    api_key_env_var: str = API_KEY_ENV
    on_error: Literal["raise", "skip"] = "raise"
    options: dict[str, Any] = Field(default_factory=dict)
    max_retries: int = 0
    _adapter: Adapter = PrivateAttr()

    @classmethod
    def create(cls, **kwargs: Any) -> MultimodalEmbedFunction:
        """LanceDB's constructor (it resolves ``$var:`` values); ``embedder=`` is passed through uncopied."""
        if kwargs.get("embedder") is not None:
            kwargs["embedder"] = _Shared(kwargs["embedder"])
        return super().create(**kwargs)

    def __init__(self, *args: Any, embedder: Any = None, api_key: str | None = None, name: str | None = None,
                 **kwargs: Any):
        if name is not None:
            if kwargs.get("model") not in (None, name):
                raise InvalidInputError(f"name={name!r} and model={kwargs['model']!r}: pass one of them")
            kwargs["model"] = name
        options = dict(kwargs.get("options") or {})
        if "api_key" in options:  # the key is used, never kept in the options the table stores
            api_key = api_key if api_key is not None else options.pop("api_key")
            options.pop("api_key", None)
            kwargs["options"] = options
        super().__init__(*args, **kwargs)
        if isinstance(embedder, _Shared):
            embedder = embedder.obj
        if embedder is not None:
            if self.model is not None or self.base_url is not None or self.options:
                raise InvalidInputError("pass embedder= alone, or model= with its options, not both")
            adapter = make_adapter(embedder=embedder, query_task=self.query_task, document_task=self.document_task,
                                   dimensions=self.dimensions, batch_size=self.batch_size)
            config = adapter.config()
            self.model = config["model"]
            self.options = {"vision": config["vision"]} if config.get("vision") else {}
            remember_embedder(self.model, self.options, embedder)  # the table's rebuilt function finds this object
        else:
            if self.base_url and api_key is not None:
                _KEYS[self.base_url.rstrip("/")] = api_key
            elif self.base_url:
                api_key = _KEYS.get(self.base_url.rstrip("/"))
            remote = {"api_key": api_key, "api_key_env_var": self.api_key_env_var} if self.base_url else {}
            if api_key is not None and not self.base_url:
                raise InvalidInputError("api_key= is for a service (base_url=); a local model needs none")
            adapter = make_adapter(self.model, base_url=self.base_url, query_task=self.query_task,
                                   document_task=self.document_task, dimensions=self.dimensions,
                                   batch_size=self.batch_size, timeout=self.timeout, **remote, **self.options)
        self._adapter = adapter

    def safe_model_dump(self) -> dict[str, Any]:
        """What the table stores (never the ``Embedder`` object or an API key: only the name of the variable that
        holds the key)."""
        return self.model_dump()

    def endpoints(self) -> list[str]:
        """The service this function sends data (and its key) to: a table reopened in a process that has not
        created it, or called ``get_registry().allow_endpoint(url)``, refuses to embed (LanceDB's trust check)."""
        return [self.base_url.rstrip("/")] if self.base_url else []

    def compute_source_embeddings_with_retry(self, *args: Any, **kwargs: Any) -> list[np.ndarray | None]:
        if self.max_retries == 0:  # LanceDB's wrapper would hide the error behind "Maximum number of retries"
            return self.compute_source_embeddings(*args, **kwargs)
        return super().compute_source_embeddings_with_retry(*args, **kwargs)

    def compute_query_embeddings_with_retry(self, *args: Any, **kwargs: Any) -> list[np.ndarray]:
        if self.max_retries == 0:
            return self.compute_query_embeddings(*args, **kwargs)
        return super().compute_query_embeddings_with_retry(*args, **kwargs)

    def ndims(self) -> int:
        return self._adapter.backend.dim

    def _is_image_source(self, column: Any) -> bool:
        if self.source != "auto":
            return self.source == "image"
        if isinstance(column, (pa.Array, pa.ChunkedArray)):
            if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
                return True
            column = column.to_pylist()
        elif isinstance(column, (str, bytes)):
            column = [column]
        values = [x for x in column if x is not None]
        if any(isinstance(x, (bytes, bytearray)) for x in values):
            return True
        return bool(values) and all(isinstance(x, str) and _names_image(x) for x in values)

    def compute_source_embeddings(self, column: Any, *args: Any, **kwargs: Any) -> list[np.ndarray | None]:
        """One vector per row of the source column, the whole column batch in one model call."""
        image = self._is_image_source(column)
        items = self.sanitize_input(column)
        if isinstance(items, np.ndarray):
            items = items.tolist()
        items = list(items)
        if not image:
            bad = next((i for i, x in enumerate(items) if not isinstance(x, str)), None)
            if bad is not None:
                raise InvalidInputError(f"text source row #{bad} is {items[bad]!r}, not a string")
            return list(self._adapter.documents(items))
        batch = self._adapter.images_with_errors(items)
        if self.on_error == "raise":
            raise_failures(batch.failures)
        for f in batch.failures:
            logger.warning("left out image #%d %s: %s", f.index, f.item, f.reason)
        out: list[np.ndarray | None] = [None] * len(items)
        for row, i in zip(batch.vectors, batch.indices):
            out[i] = row
        return out

    def compute_query_embeddings(self, query: Any, *args: Any, **kwargs: Any) -> list[np.ndarray]:
        """A string is a text query (query prefix); a PIL image, bytes or ``Path`` is an image query."""
        if isinstance(query, str):
            return [self._adapter.queries([query])[0]]
        if isinstance(query, (os.PathLike, bytes, bytearray)) or hasattr(query, "getbands"):
            return [self._adapter.images([query])[0]]
        raise InvalidInputError(f"a query is a string or an image (PIL image, bytes or Path), got "
                                f"{type(query).__name__}")


def _names_image(text: str) -> bool:
    """Whether a string names an image file, as a path, a ``file:`` or http(s) URL (its path part has an image
    extension) or an image data URI: what LanceDB's open-clip function reads as an image."""
    if len(text) > 4096 or "\n" in text:
        return False
    if text[:11].lower() == "data:image/":
        return True
    lowered = text[:8].lower()
    if lowered.startswith(("http://", "https://")):
        from urllib.parse import urlsplit

        return is_image_name(urlsplit(text).path)
    try:
        path = file_url_path(text) or text
    except ValueError:
        return False
    return is_image_name(path)
