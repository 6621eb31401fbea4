"""Model names with a task: ``NAME:query`` reaches a served model's query side through any OpenAI-style client.

The OpenAI contract has no query/document split, so a client that only knows ``model`` (LangChain's
``OpenAIEmbeddings``, LlamaIndex's ``OpenAILikeEmbedding``, Chroma's ``OpenAIEmbeddingFunction``) sends its queries
exactly as its documents. For a model with task prefixes (nomic's ``search_query: ``), the query vector is then the
wrong one. Every served model therefore answers to ``NAME:SUFFIX`` as well: ``NAME:query`` embeds with the query
task, ``NAME:document`` with the document task (the plain name's default), and ``NAME:search_query``,
``NAME:search_document``, ``NAME:clustering``, ``NAME:classification`` with that task. A request's own ``task`` or
``input_type`` wins over the name's. ``/v1/models`` lists ``NAME:query`` beside ``NAME`` for models with prefixes,
each with its ``task``.
"""

from __future__ import annotations

from typing import Any

TASKS = ("search_query", "search_document", "clustering", "classification")
DEFAULT_TASK = "search_document"
SUFFIXES = {"query": "search_query", "document": "search_document", **{t: t for t in TASKS}}


def resolve(state: Any, name: str | None) -> tuple[Any, str, str]:
    """``(served model, its default task, the name to answer with)`` for a request's ``model`` (``None``: the first
    served model). An unknown name is the 404 of ``state.model``."""
    if name is None or name in state.models or ":" not in name:
        served = state.model(name)
        return served, DEFAULT_TASK, served.name
    base, suffix = name.rsplit(":", 1)
    if base in state.models and suffix in SUFFIXES:
        return state.model(base), SUFFIXES[suffix], name
    return state.model(name), DEFAULT_TASK, name  # raises: not served


def text_lengths(emb: Any) -> dict[str, Any]:
    """What a client may send per text: the context with its special tokens (``max_input_tokens``), the room left
    for the text itself (``max_text_tokens``: without the special tokens) and, for a model with task prefixes,
    the room left after each task's prefix (``max_text_tokens_by_task``). Token counts are the model's tokenizer's."""
    limit = emb.max_text_length
    if emb.text_encoder is None or not limit:
        return {"max_input_tokens": limit}
    out: dict[str, Any] = {"max_input_tokens": limit, "max_text_tokens": limit - emb.count_tokens([""], None)[0]}
    prefixes = getattr(emb.text_encoder, "prefixes", None) or {}
    if prefixes:
        out["max_text_tokens_by_task"] = {t: limit - emb.count_tokens([""], t)[0] for t in sorted(prefixes)}
    return out


def model_entries(served: Any, created: int, long_text: str) -> list[dict[str, Any]]:
    """The ``/v1/models`` entries of one served model: itself, then ``NAME:query`` when it has task prefixes."""
    base = {**served.describe(created), **text_lengths(served.embedder), "long_text": long_text}
    has_prefixes = bool(getattr(served.embedder.text_encoder, "prefixes", None))
    if not has_prefixes:
        return [base]
    return [{**base, "task": DEFAULT_TASK},
            {**base, "id": f"{served.name}:query", "parent": served.name, "task": "search_query"}]
