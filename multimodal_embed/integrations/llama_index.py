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
from .common import API_KEY_ENV, DOCUMENT_TASK, QUERY_TASK, Adapter, make_adapter

try:
    from llama_index.core.bridge.pydantic import Field, PrivateAttr
    from llama_index.core.embeddings import MultiModalEmbedding
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise MissingDependencyError("the LlamaIndex adapter needs llama-index-core: "
                                 "pip install 'multimodal-embed[llama-index]'") from exc

Embedding = list[float]
_BASE_FIELDS = frozenset(MultiModalEmbedding.model_fields) - {"embed_batch_size", "callback_manager"}


class MultimodalEmbedding(MultiModalEmbedding):
    """Texts (documents and queries, each with its task prefix) and images in one space, batched: each batch
    LlamaIndex forms (``embed_batch_size``, default the model's ``batch_size``) is one model call.

    Built as ``MultimodalEmbedding(model="NAME_OR_FOLDER", device=..., precision=...)``,
    ``MultimodalEmbedding(embedder=emb)`` or ``MultimodalEmbedding(base_url="http://host:port/v1")`` (its key:
    ``api_key=``, never stored, or the environment variable ``api_key_env_var``, ``MMEMBED_API_KEY``). A bad image
    raises :class:`~multimodal_embed.ImageDecodeError` naming it. ``to_dict()`` records how to build it again
    (``from_dict``): the model's name (an ``Embedder`` object by its name), the service, the tasks and options.
    """

    model: str | None = Field(default=None, description="the model's name or folder (with base_url: the service's)")
    base_url: str | None = Field(default=None, description="an mmembed serve service, http://host:port/v1")
    query_task: str | None = QUERY_TASK
    document_task: str | None = DOCUMENT_TASK
    dimensions: int | None = None
    batch_size: int = 32
    timeout: float = 60.0
    api_key_env_var: str = API_KEY_ENV
    options: dict[str, Any] = Field(default_factory=dict, description="Embedder.from_pretrained options")
    _adapter: Adapter = PrivateAttr()

    def __init__(self, model: str | os.PathLike | None = None, *, embedder: Any = None, base_url: str | None = None,
                 query_task: str | None = QUERY_TASK, document_task: str | None = DOCUMENT_TASK,
                 dimensions: int | None = None, batch_size: int = 32, api_key: str | None = None,
                 api_key_env_var: str = API_KEY_ENV, timeout: float = 60.0, embed_batch_size: int | None = None,
                 callback_manager: Any = None, options: dict[str, Any] | None = None, **embedder_options: Any):
        base = {k: embedder_options.pop(k) for k in list(embedder_options) if k in _BASE_FIELDS}
        embedder_options = {**(options or {}), **embedder_options}
        remote = {"api_key": api_key, "api_key_env_var": api_key_env_var} if base_url is not None else {}
        adapter = make_adapter(model, embedder=embedder, base_url=base_url, query_task=query_task,
                               document_task=document_task, dimensions=dimensions, batch_size=batch_size,
                               timeout=timeout, **remote, **embedder_options)
        config = adapter.config()
        if embedder is not None and config.get("vision"):
            embedder_options = {"vision": config["vision"]}
        name = config.get("model") or base_url or "multimodal-embed"
        base.setdefault("model_name", str(name))
        super().__init__(embed_batch_size=embed_batch_size or batch_size, callback_manager=callback_manager,
                         model=config.get("model"), base_url=base_url, query_task=query_task,
                         document_task=document_task, dimensions=dimensions, batch_size=batch_size, timeout=timeout,
                         api_key_env_var=api_key_env_var, options=embedder_options, **base)
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
