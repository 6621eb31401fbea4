"""Chroma: :class:`MultimodalEmbeddingFunction`, a named embedding function for documents and images
(``pip install 'multimodal-embed[chroma]'``).

>>> ef = MultimodalEmbeddingFunction(model="minilm-efficientnet-lite0")
>>> col = chromadb.PersistentClient(path).get_or_create_collection("photos", embedding_function=ef)
>>> col.add(ids=["a"], images=[np.asarray(Image.open("cat.jpg"))]); col.query(query_texts=["a cat"])
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..encoders import ImageFailure
from ..errors import InputTypeError, InvalidInputError, MissingDependencyError
from .common import DOCUMENT_TASK, QUERY_TASK, make_adapter, raise_failures

try:
    from chromadb.api.types import Documents, EmbeddingFunction, Embeddings, Images, Space
    from chromadb.utils.embedding_functions import register_embedding_function
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise MissingDependencyError("the Chroma adapter needs chromadb: pip install 'multimodal-embed[chroma]'") from exc

NAME = "multimodal-embed"
# configuration keys that change the vectors: refused by validate_config_update on an existing collection
_FIXED = ("model", "base_url", "dimensions", "query_task", "document_task")


@register_embedding_function
class MultimodalEmbeddingFunction(EmbeddingFunction[Documents | Images]):
    """Documents (strings, with the document task prefix) and images (Chroma's HxW or HxWxC arrays of any numeric
    dtype, read as 8-bit pixels: see :func:`pixels`) in one space.

    Queries (``query_texts``) get the query prefix through ``embed_query``. A call's documents go to the model in
    one call, its images in another. Chroma stores the configuration (``get_config``) with the collection and
    rebuilds the function from it (``build_from_config``) when the collection is reopened without one; a function
    built from an ``Embedder`` object records the model's name, so reopening loads that model by name.
    """

    def __init__(self, model: str | os.PathLike | None = None, *, embedder: Any = None, base_url: str | None = None,
                 query_task: str | None = QUERY_TASK, document_task: str | None = DOCUMENT_TASK,
                 dimensions: int | None = None, batch_size: int = 32, **options: Any):
        self._adapter = make_adapter(model, embedder=embedder, base_url=base_url, query_task=query_task,
                                     document_task=document_task, dimensions=dimensions, batch_size=batch_size,
                                     **options)

    def _embed(self, input: Documents | Images, query: bool) -> Embeddings:
        items = list(input)
        texts = [i for i, x in enumerate(items) if isinstance(x, str)]
        images = [i for i, x in enumerate(items) if isinstance(x, np.ndarray)]
        if len(texts) + len(images) != len(items):
            bad = next(i for i, x in enumerate(items) if not isinstance(x, (str, np.ndarray)))
            raise InputTypeError(f"item #{bad} is a {type(items[bad]).__name__}: expected a document (str) or an "
                                 f"image (numpy array)")
        out: list[Any] = [None] * len(items)
        if texts:
            embed = self._adapter.queries if query else self._adapter.documents
            for i, row in zip(texts, embed([items[i] for i in texts])):
                out[i] = row
        if images:
            arrays, failures = [], []
            for i in images:
                try:
                    arrays.append(pixels(items[i]))
                except ValueError as exc:
                    failures.append(ImageFailure(i, f"#{i} array {items[i].dtype} {items[i].shape}", str(exc)))
            raise_failures(failures)
            for i, row in zip(images, self._adapter.images(arrays)):
                out[i] = row
        return out

    def __call__(self, input: Documents | Images) -> Embeddings:
        return self._embed(input, query=False)

    def embed_query(self, input: Documents | Images) -> Embeddings:
        return self._embed(input, query=True)

    def add_images(self, collection: Any, ids: Sequence[str], images: Sequence[Any],
                   metadatas: Sequence[dict] | None = None, uris: Sequence[str] | None = None) -> list[str]:
        """Add images (paths, URLs, bytes, PIL images or arrays) to ``collection`` in one model call: every good
        image is stored, then a bad one raises :class:`~multimodal_embed.ImageDecodeError` naming it (position,
        item and id). ``uris`` defaults to the paths given. Returns the stored ids."""
        ids = list(ids)
        if len(ids) != len(images):
            raise InvalidInputError(f"{len(ids)} ids for {len(images)} images")
        if metadatas is not None and len(metadatas) != len(ids):
            raise InvalidInputError(f"{len(metadatas)} metadatas for {len(ids)} images")
        if uris is None and all(isinstance(x, (str, os.PathLike)) for x in images):
            uris = [os.fspath(x) for x in images]
        batch = self._adapter.images_with_errors(images)
        keep = batch.indices
        if keep:
            collection.add(ids=[ids[i] for i in keep], embeddings=batch.vectors,
                           metadatas=[metadatas[i] for i in keep] if metadatas is not None else None,
                           uris=[uris[i] for i in keep] if uris is not None else None)
        raise_failures(batch.failures, ids)
        return [ids[i] for i in keep]

    @staticmethod
    def name() -> str:
        return NAME

    def default_space(self) -> Space:
        return "cosine"

    def supported_spaces(self) -> list[Space]:
        return ["cosine", "ip", "l2"]  # unit rows: the three rank alike

    def get_config(self) -> dict[str, Any]:
        return {k: v for k, v in self._adapter.config().items() if k != "api_key"}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> MultimodalEmbeddingFunction:
        config = dict(config)
        if config.get("base_url"):
            config.pop("batch_size", None)
            return MultimodalEmbeddingFunction(base_url=config.pop("base_url"), **config)
        if not config.get("model"):
            raise InvalidInputError(f"a {NAME} configuration needs 'model' or 'base_url': {config}")
        return MultimodalEmbeddingFunction(**config)

    @staticmethod
    def validate_config(config: dict[str, Any]) -> None:
        if not isinstance(config, dict) or not (config.get("model") or config.get("base_url")):
            raise InvalidInputError(f"a {NAME} configuration needs 'model' or 'base_url': {config!r}")

    def validate_config_update(self, old_config: dict[str, Any], new_config: dict[str, Any]) -> None:
        for key in _FIXED:
            if key in new_config and new_config[key] != old_config.get(key):
                raise InvalidInputError(f"{key} cannot change on an existing collection: its vectors would no "
                                        f"longer match ({old_config.get(key)!r} -> {new_config[key]!r})")


def pixels(array: np.ndarray) -> np.ndarray:
    """A Chroma image (its ``Image`` type allows unsigned, int64 and float64 arrays) as 8-bit pixels, converted as
    Pillow converts a wider mode to 8 bits (``Image.fromarray(a).convert("L")``): values clipped to 0..255 and the
    fraction of a float dropped; a boolean is 0 or 255. Non-finite values and non-numeric arrays raise
    ``ValueError``. uint8 arrays are returned as they are."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * np.uint8(255)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError("the array holds NaN or infinite values")
    elif not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"an image array must be numeric, got {array.dtype}")
    return np.clip(array, 0, 255).astype(np.uint8)
