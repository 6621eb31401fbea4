"""LlamaIndex: :class:`MultimodalEmbedding`, a ``MultiModalEmbedding`` for texts and images (``pip install
'multimodal-embed[llama-index]'``).

>>> emb = MultimodalEmbedding(model="minilm-efficientnet-lite0")
>>> index = MultiModalVectorStoreIndex.from_documents(docs, embed_model=emb, image_embed_model=emb)
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from ..errors import MissingDependencyError
from .common import DOCUMENT_TASK, QUERY_TASK, Adapter, make_adapter

try:
    from llama_index.core.bridge.pydantic import PrivateAttr
    from llama_index.core.embeddings import MultiModalEmbedding
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise MissingDependencyError("the LlamaIndex adapter needs llama-index-core: "
                                 "pip install 'multimodal-embed[llama-index]'") from exc

Embedding = list[float]


class MultimodalEmbedding(MultiModalEmbedding):
    """Texts (documents and queries, each with its task prefix) and images in one space, batched: each batch
    LlamaIndex forms (``embed_batch_size``, default the model's ``batch_size``) is one model call.

    Built as ``MultimodalEmbedding(model="NAME_OR_FOLDER", device=..., precision=...)``,
    ``MultimodalEmbedding(embedder=emb)`` or ``MultimodalEmbedding(base_url="http://host:port/v1")``. A bad image
    raises :class:`~multimodal_embed.ImageDecodeError` naming it.
    """

    _adapter: Adapter = PrivateAttr()

    def __init__(self, model: str | os.PathLike | None = None, *, embedder: Any = None, base_url: str | None = None,
                 query_task: str | None = QUERY_TASK, document_task: str | None = DOCUMENT_TASK,
                 dimensions: int | None = None, batch_size: int = 32, api_key: str | None = None,
                 timeout: float = 60.0, embed_batch_size: int | None = None, callback_manager: Any = None,
                 **embedder_options: Any):
        adapter = make_adapter(model, embedder=embedder, base_url=base_url, query_task=query_task,
                               document_task=document_task, dimensions=dimensions, batch_size=batch_size,
                               api_key=api_key, timeout=timeout, **embedder_options)
        name = adapter.config().get("model") or base_url or "multimodal-embed"
        super().__init__(model_name=str(name), embed_batch_size=embed_batch_size or batch_size,
                         callback_manager=callback_manager)
        self._adapter = adapter

    @classmethod
    def class_name(cls) -> str:
        return "MultimodalEmbedding"

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._adapter.queries([query])[0].tolist()

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._adapter.documents([text])[0].tolist()

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return self._adapter.documents(texts).tolist()

    def _get_image_embedding(self, img_file_path: Any) -> Embedding:
        return self._adapter.images([img_file_path])[0].tolist()

    def _get_image_embeddings(self, img_file_paths: list[Any]) -> list[Embedding]:
        return self._adapter.images(img_file_paths).tolist()

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)

    async def _aget_image_embedding(self, img_file_path: Any) -> Embedding:
        return await asyncio.to_thread(self._get_image_embedding, img_file_path)

    async def _aget_image_embeddings(self, img_file_paths: list[Any]) -> list[Embedding]:
        return await asyncio.to_thread(self._get_image_embeddings, img_file_paths)
