"""Request bodies (pydantic, so they show in the OpenAPI schema) and the OpenAI error shape.

Inputs are validated item by item in :mod:`multimodal_embed.serving.inputs`, so that an error names the item
(``input[3]``); the models here only fix the top-level shape.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ApiError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Request(BaseModel):
    """Every request body: an unknown field is refused with 400 naming it (as OpenAI does), never ignored."""

    model_config = ConfigDict(extra="forbid")


class EmbeddingsRequest(_Request):
    """``POST /v1/embeddings``: OpenAI's request (or vLLM's chat-style ``messages``), plus ``task``, ``input_type``,
    ``modality``, ``truncate`` and ``long_text``."""

    input: Any = Field(default=None, description="a string, a list of up to 2048 strings, or a list of content "
                       "parts ({'type': 'text', 'text': ...} / {'type': 'image_url', 'image_url': {'url': "
                       "'data:image/...;base64,...'}})")
    messages: list[Any] | None = Field(default=None, description="vLLM's chat-style request instead of input: "
                                       "messages whose content is a string or content parts; one embedding for "
                                       "the request (its text, or its one image)")
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None
    task: str | None = Field(default=None, description="nomic task prefix: search_query, search_document, "
                                                      "clustering, classification")
    input_type: Literal["query", "document"] | None = None
    modality: Literal["text", "image"] | None = Field(default=None, description="infinity's extension: 'image' "
                                                                               "reads every input as an image")
    truncate: bool | None = Field(default=None, description="cut texts over the model's context instead of "
                                                            "refusing them (default: the server's setting)")
    long_text: Literal["refuse", "truncate", "mean"] | None = Field(
        default=None, description="texts over the model's context: refused, cut, or embedded whole as the mean of "
                                  "their chunks (the library's long_text; default: the server's --long-text)")


class SearchRequest(_Request):
    """``POST /v1/search``: a text or an image (data URI or content part) against the served index."""

    query: Any = Field(description="a text, or {'type': 'image_url', 'image_url': {'url': 'data:...'}}")
    model: str | None = None
    top_k: int = Field(default=10, ge=1, le=1000)
    filter: str | None = Field(default=None, max_length=1024, description="glob on the stored path")
    min_score: float | None = Field(default=None, ge=-1.0, le=1.0, allow_inf_nan=False,
                                    description="the lowest cosine score returned, in [-1, 1]")
    rescore: int | None = Field(default=None, ge=0, le=100, description="binary stores: Hamming candidates per "
                                "hit rescored with the int8 or float32 vectors (default 4; 0: Hamming only)")


class ClassifyRequest(_Request):
    """``POST /v1/classify``: images against labels with the zero-shot classifier."""

    images: list[Any] = Field(description="data URIs or image_url content parts")
    labels: list[str]
    model: str | None = None
    templates: str = Field(default="openai-imagenet", description="openai-imagenet, simple or none")
    top_k: int = Field(default=5, ge=1, le=1000)
