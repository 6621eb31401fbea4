"""vLLM's chat-style embedding request: ``{"messages": [{"role": "user", "content": [...]}]}`` on ``/v1/embeddings``.

As vLLM does, a request with ``messages`` gets one embedding. Its content parts are read with the same rules as
``input`` (:mod:`~multimodal_embed.serving.inputs`): the texts of every message, in order and joined by a newline,
are one text, embedded as ``embed_text`` would (the request's task, or the model name's); one image part is one
image, embedded as ``embed_images`` would. Text and an image together are refused: these models put them in one
space but have no fused text-and-image embedding.
"""

from __future__ import annotations

from typing import Any

from .inputs import Item, Limits, _part, parse_input
from .schemas import ApiError


def request_items(req: Any, limits: Limits) -> list[Item]:
    """The items a ``/v1/embeddings`` request asks for: its ``input``, or the one item its ``messages`` make."""
    if req.messages is None:
        if req.input is None:
            raise ApiError(400, "input is required (a string, a list of strings or content parts), or send "
                                "chat-style messages", param="input", code="invalid_input")
        return parse_input(req.input, modality=req.modality, limits=limits)
    if req.input is not None:
        raise ApiError(400, "send input or messages, not both", param="messages", code="invalid_input")
    return [message_item(req.messages, limits)]


def message_item(messages: list[Any], limits: Limits) -> Item:
    if not messages:
        raise ApiError(400, "messages is empty", param="messages", code="invalid_input")
    texts: list[str] = []
    images: list[tuple[str, Item]] = []
    for m, message in enumerate(messages):
        where = f"messages[{m}]"
        if not isinstance(message, dict):
            raise ApiError(400, f"{where} must be an object with 'role' and 'content'", param=where,
                           code="invalid_input")
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
            continue
        if not isinstance(content, list) or not content:
            raise ApiError(400, f"{where}.content must be a string or a non-empty list of content parts",
                           param=f"{where}.content", code="invalid_input")
        for p, part in enumerate(content):
            param = f"{where}.content[{p}]"
            if not isinstance(part, dict):
                raise ApiError(400, f"{param} must be a content part object", param=param, code="invalid_input")
            item = _part(part, param, limits)
            if item.kind == "text":
                texts.append(item.value)
            else:
                images.append((param, item))
    if images and texts:
        raise ApiError(400, "messages hold text and an image: this model has no joint text-and-image embedding; "
                            "send them as two requests (one embedding each, in one space)", param="messages",
                       code="mixed_content")
    if len(images) > 1:
        raise ApiError(400, f"messages hold {len(images)} images; one embedding per request means one image "
                            f"(send several in input instead)", param=images[1][0], code="too_many_images")
    return images[0][1] if images else Item("text", "\n".join(texts))
