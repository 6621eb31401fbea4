"""multimodal_embed: text and images in one embedding space (nomic-embed, open_clip, CLIP/SigLIP).

>>> from multimodal_embed import Embedder
>>> emb = Embedder.from_pretrained(text="nomic-ai/nomic-embed-text-v1.5")
>>> emb.embed_text(["What is TSNE?"], task="search_query").shape
(1, 768)

Heavy modules (torch, transformers, the optional backends) are imported on first use, so importing the
package is cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (
    CheckpointError,
    ConfigError,
    HubUnreachableError,
    ImageDecodeError,
    IncompatibleModelsError,
    IndexAccessError,
    IndexCorruptError,
    IndexMismatchError,
    InputTypeError,
    InvalidInputError,
    MissingDependencyError,
    ModelNotFoundError,
    MultimodalEmbedError,
    NotAModelFolderError,
    ServingError,
)

__version__ = "0.1.0"

_LAZY = {"Embedder": ".embedder", "list_models": ".registry", "ModelSpec": ".registry",
         "ZeroShotClassifier": ".zeroshot", "ImageIndex": ".index"}

__all__ = [
    "CheckpointError",
    "ConfigError",
    "Embedder",
    "HubUnreachableError",
    "ImageDecodeError",
    "ImageIndex",
    "IncompatibleModelsError",
    "IndexAccessError",
    "IndexCorruptError",
    "IndexMismatchError",
    "InputTypeError",
    "InvalidInputError",
    "MissingDependencyError",
    "ModelNotFoundError",
    "ModelSpec",
    "MultimodalEmbedError",
    "NotAModelFolderError",
    "ServingError",
    "ZeroShotClassifier",
    "__version__",
    "list_models",
]

if TYPE_CHECKING:
    from .embedder import Embedder
    from .index import ImageIndex
    from .registry import ModelSpec, list_models
    from .zeroshot import ZeroShotClassifier


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'multimodal_embed' has no attribute {name!r}")
