"""LangChain: :class:`MultimodalEmbeddings`, an ``Embeddings`` for texts and images (``pip install
'multimodal-embed[langchain]'``).

>>> emb = MultimodalEmbeddings(model="minilm-efficientnet-lite0")
>>> store = InMemoryVectorStore(emb); store.add_texts(["a red bicycle"]); add_images(store, ["cat.jpg"])
>>> store.similarity_search("a cat")
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Sequence
from typing import Any

from ..errors import InvalidInputError, MissingDependencyError
from .common import DOCUMENT_TASK, QUERY_TASK, make_adapter, raise_failures

try:
    from langchain_core.embeddings import Embeddings
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise MissingDependencyError("the LangChain adapter needs langchain-core: "
                                 "pip install 'multimodal-embed[langchain]'") from exc


class MultimodalEmbeddings(Embeddings):
    """Texts and images in one space for LangChain vector stores.

    ``embed_documents`` uses the document task prefix, ``embed_query`` the query prefix (nomic's
    ``search_document`` / ``search_query``; models without prefixes ignore them); ``embed_image`` takes image
    paths or URLs, as LangChain's multimodal stores pass them. Each call sends its whole list to the model at once.
    The ``a``-variants run the same work in a worker thread, off the event loop.

    Built as ``MultimodalEmbeddings(model="NAME_OR_FOLDER", device=..., precision=...)``,
    ``MultimodalEmbeddings(embedder=emb)`` or ``MultimodalEmbeddings(base_url="http://host:port/v1")``.
    """

    def __init__(self, model: str | os.PathLike | None = None, *, embedder: Any = None, base_url: str | None = None,
                 query_task: str | None = QUERY_TASK, document_task: str | None = DOCUMENT_TASK,
                 dimensions: int | None = None, batch_size: int = 32, **options: Any):
        self._adapter = make_adapter(model, embedder=embedder, base_url=base_url, query_task=query_task,
                                     document_task=document_task, dimensions=dimensions, batch_size=batch_size,
                                     **options)

    @property
    def backend(self) -> Any:
        """Where the vectors come from (a local :class:`~multimodal_embed.Embedder` or a service)."""
        return self._adapter.backend

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self._adapter.documents(texts).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self._adapter.queries([text])[0].tolist()

    def embed_image(self, uris: list[str]) -> list[list[float]]:
        """Embed images (paths, URLs, bytes, PIL images or arrays); a bad one raises
        :class:`~multimodal_embed.ImageDecodeError` naming it."""
        return self._adapter.images(uris).tolist()

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        return await asyncio.to_thread(self.embed_query, text)

    async def aembed_image(self, uris: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self.embed_image, uris)


def add_images(store: Any, uris: Sequence[str], metadatas: Sequence[dict] | None = None,
               ids: Sequence[str] | None = None) -> list[str]:
    """Add images to a vector store whose embedding is a :class:`MultimodalEmbeddings`, in one model call.

    Stores with their own ``add_images`` (``langchain_chroma.Chroma``) are handed the call; otherwise the store must
    be an ``InMemoryVectorStore``: each image becomes a document whose text is its path and whose metadata gains
    ``{"image": path}``. Every good image is stored; then an image that could not be used raises
    :class:`~multimodal_embed.ImageDecodeError` naming it (its position, path and id). Returns the stored ids.
    """
    uris = [os.fspath(u) for u in uris]
    if metadatas is not None and len(metadatas) != len(uris):
        raise InvalidInputError(f"{len(metadatas)} metadatas for {len(uris)} images")
    if ids is not None and len(ids) != len(uris):
        raise InvalidInputError(f"{len(ids)} ids for {len(uris)} images")
    if hasattr(store, "add_images"):
        return store.add_images(uris, metadatas=list(metadatas) if metadatas else None,
                                ids=list(ids) if ids else None)
    from langchain_core.vectorstores import InMemoryVectorStore

    if not isinstance(store, InMemoryVectorStore) or not isinstance(store.embeddings, MultimodalEmbeddings):
        raise InvalidInputError("add_images needs a store with add_images, or an InMemoryVectorStore built with "
                                "MultimodalEmbeddings")
    ids = list(ids) if ids is not None else [str(uuid.uuid4()) for _ in uris]
    batch = store.embeddings._adapter.images_with_errors(uris)
    stored = []
    for row, i in zip(batch.vectors, batch.indices):
        meta = {**(metadatas[i] if metadatas else {}), "image": uris[i]}
        store.store[ids[i]] = {"id": ids[i], "vector": row.tolist(), "text": uris[i], "metadata": meta}
        stored.append(ids[i])
    raise_failures(batch.failures, ids)
    return stored
