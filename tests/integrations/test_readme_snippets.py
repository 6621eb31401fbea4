"""README's "Using it from LangChain / LlamaIndex / Chroma / LanceDB / the openai client": every Python block runs as
pasted, twice (pasting a snippet again must work), in a scratch folder. The blocks that talk to
``http://127.0.0.1:8000`` get a real server on a free loopback port instead (the tiny nomic pair served as
``nomic``, so ``nomic:query`` is a prefixed model's query side), the port being the only change; what they print is
checked against the library's vectors."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "## Using it from LangChain / LlamaIndex / Chroma / LanceDB / the openai client"
PORT = "127.0.0.1:8000"


def _blocks() -> list[str]:
    text = README.read_text(encoding="utf-8")
    assert SECTION in text, "the README section is gone"
    body = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, flags=re.DOTALL)


BLOCKS = _blocks()
LOCAL = [b for b in BLOCKS if PORT not in b]
SERVED = [b for b in BLOCKS if PORT in b]


def _run(code: str) -> tuple[dict, str]:
    namespace: dict = {"__name__": "__readme__"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec", dont_inherit=True), namespace)  # noqa: S102 - the README's own snippets
    return namespace, out.getvalue()


def test_the_section_has_a_snippet_for_each_framework():
    joined = "\n".join(BLOCKS)
    for needle in ("integrations.langchain", "integrations.llama_index", "integrations.chroma",
                   "integrations.lancedb", "from openai import OpenAI", "langchain_openai", "OpenAILikeEmbedding",
                   "OpenAIEmbeddingFunction", "cohere.ClientV2"):
        assert needle in joined, needle
    assert len(LOCAL) == 4 and len(SERVED) == 5


@pytest.mark.slow  # the built-in model, real photos, four stores: ~55 s on 2 cores
@pytest.mark.parametrize("code", LOCAL, ids=["langchain", "llama_index", "chroma", "lancedb"])
def test_adapter_snippets_run_as_pasted_twice(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        _, printed = _run(code)
    assert printed.strip(), "each snippet prints its answer"
    answer = printed.strip().splitlines()[-1]
    assert "cat" in answer or "horse" in answer, answer  # the gallery photo the query names comes first


@pytest.fixture(scope="module")
def served(nomic_pair):
    from .test_remote import in_process

    with in_process({"nomic": nomic_pair}) as url:
        yield url.rsplit("/v1", 1)[0].removeprefix("http://")


@pytest.mark.parametrize("code", SERVED, ids=["openai", "langchain_openai", "llama_index_openai_like",
                                              "chroma_openai", "cohere"])
def test_client_snippets_run_as_pasted_against_a_real_server(code, served, nomic_pair, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("CHROMA_OPENAI_API_KEY", raising=False)
    for _ in range(2):
        namespace, printed = _run(code.replace(PORT, served))
    answer = printed.strip().splitlines()[-1]
    query = nomic_pair.embed_text(["where is the cat?"], task="search_query")[0]
    if "query" in namespace and hasattr(namespace["query"], "data"):  # the openai client
        got = np.asarray(namespace["query"].data[0].embedding)
        assert float(np.abs(got - query).max()) <= 1e-6
    elif "res" in namespace:  # cohere
        assert float(np.abs(np.asarray(namespace["res"].embeddings.float_[0]) - query).max()) <= 1e-6
    elif "queries" in namespace and hasattr(namespace["queries"], "embed_query"):  # langchain
        got = np.asarray(namespace["queries"].embed_query("where is the cat?"))
        assert float(np.abs(got - query).max()) <= 1e-6
    else:
        assert answer, printed
    # the retrieval snippets print the nearest of their two documents: the one the query vector is nearest to
    docs = {"cat": "a cat asleep on a sofa", "bicycle": "a red bicycle"}
    if "similarity_search" in code or "retrieve(" in code or "col.query" in code:
        vectors = nomic_pair.embed_text(list(docs.values()), task="search_document")
        best = list(docs)[int(np.argmax(vectors @ query))]
        assert (docs[best] if "retrieve(" in code else best) in answer, answer
