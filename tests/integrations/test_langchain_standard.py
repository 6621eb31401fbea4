"""LangChain's own standard test suites (``langchain-tests``) on :class:`MultimodalEmbeddings`: in process (the
built-in model) and through ``mmembed serve`` (``base_url=``, a real server on 127.0.0.1)."""

from __future__ import annotations

import pytest

pytest.importorskip("langchain_tests")

from langchain_tests.integration_tests import EmbeddingsIntegrationTests
from langchain_tests.unit_tests import EmbeddingsUnitTests

from multimodal_embed.integrations.langchain import MultimodalEmbeddings

LOCAL = {"model": "minilm-efficientnet-lite0", "device": "cpu"}


class _Async:
    """The suite's async tests run under pytest-asyncio (langchain-tests expects asyncio_mode=auto; the mark on the
    class reaches them without overriding a test, which the suite forbids)."""

    pytestmark = pytest.mark.asyncio


class TestLocalUnit(EmbeddingsUnitTests):
    @property
    def embeddings_class(self) -> type[MultimodalEmbeddings]:
        return MultimodalEmbeddings

    @property
    def embedding_model_params(self) -> dict:
        return LOCAL


class TestLocalIntegration(_Async, EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[MultimodalEmbeddings]:
        return MultimodalEmbeddings

    @property
    def embedding_model_params(self) -> dict:
        return LOCAL


@pytest.fixture(scope="module")
def service(nomic_pair):
    from .test_remote import in_process

    with in_process({"tiny": nomic_pair}) as url:
        yield url


class TestServiceIntegration(_Async, EmbeddingsIntegrationTests):
    @pytest.fixture(autouse=True)
    def _url(self, service):
        self.url = service

    @property
    def embeddings_class(self) -> type[MultimodalEmbeddings]:
        return MultimodalEmbeddings

    @property
    def embedding_model_params(self) -> dict:
        return {"base_url": self.url, "model": "tiny"}
