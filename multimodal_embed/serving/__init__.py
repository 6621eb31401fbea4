"""``mmembed serve``: an OpenAI-compatible embedding server for texts and images, batched across requests.

Install with ``pip install 'multimodal-embed[serve]'``. ``create_app(ServeConfig(...))`` is the ASGI app (for any ASGI
server); :mod:`multimodal_embed.serving.cli` runs it on uvicorn or Ray Serve. Nothing here is imported by
``import multimodal_embed``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import ModelSource, ServeConfig, create_app

__all__ = ["ModelSource", "ServeConfig", "create_app"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module 'multimodal_embed.serving' has no attribute {name!r}")
