"""The encoder contract: what a text tower and an image tower provide, and how a model scores.

Every loader returns towers that satisfy :class:`TextEncoder` / :class:`ImageEncoder` (structural protocols:
no base class is required), each built with its model's :class:`Scoring`. :class:`~multimodal_embed.Embedder`
relies on exactly these members. Importing this module does not import torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .images import ImageInput

__all__ = ["ImageEncoder", "ImageFailure", "Matryoshka", "Scoring", "TextEncoder", "as_batch", "matryoshka_size",
           "truncate_unit"]


def _single_image(item: Any) -> bool:
    """Whether ``item`` is one image input (not a list of them): a path, URL, bytes, binary file, PIL image or
    an HxW / HxWxC array (a 4-D array is a batch of images)."""
    import os

    if isinstance(item, (str, bytes, bytearray, memoryview, os.PathLike)) or hasattr(item, "read"):
        return True
    if type(item).__module__.startswith("PIL."):  # a PIL image, without importing Pillow here
        return True
    return type(item).__name__ == "ndarray" and getattr(item, "ndim", 0) <= 3


def as_batch(items: Any, kind: str) -> list[Any]:
    """The one input rule of every ``embed_*`` method: a single item or a list (any iterable) of items; the result
    always has one row per item. ``kind`` is ``"texts"`` (a ``str`` is one text) or ``"images"`` (a path, URL,
    bytes, binary file, PIL image or HxWxC array is one image)."""
    from .errors import InputTypeError

    if (kind == "texts" and isinstance(items, str)) or (kind == "images" and _single_image(items)):
        return [items]
    if items is None or isinstance(items, (bytes, bytearray)) or not hasattr(items, "__iter__"):
        what = "a str or a list of str" if kind == "texts" else "an image input or a list of image inputs"
        raise InputTypeError(f"{kind} must be {what}, got {type(items).__name__}")
    return list(items)


@dataclass
class ImageFailure:
    """An input that could not be embedded: its position in the input, a short name, and why."""

    index: int
    item: str
    reason: str


@dataclass(frozen=True)
class Scoring:
    """How the model turns cosine similarities into logits: ``scale * cos + bias``, then softmax or sigmoid.

    ``logit_scale`` / ``logit_bias`` are ``None`` where the checkpoint has none (nomic, sentence-transformers).
    """

    logit_scale: float | None = None
    logit_bias: float | None = None
    kind: str = "softmax"  # "softmax" (CLIP) or "sigmoid" (SigLIP)


@runtime_checkable
class TextEncoder(Protocol):
    """A text tower.

    ``encode`` returns a ``(len(texts), d)`` float32 CPU tensor of unit rows in input order, where ``d`` is
    ``dimensionality`` or :attr:`dim`. ``prefixes`` maps task names to the prefix each adds (empty: tasks add
    nothing); ``matryoshka_dims`` lists trained truncation sizes (empty: fixed ``dim``); ``max_length`` is the
    context in tokens.
    """

    dim: int
    max_length: int
    prefixes: Mapping[str, str]
    matryoshka_dims: tuple[int, ...]
    scoring: Scoring

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    def encode(self, texts: Sequence[str], *, task: str | None = None, dimensionality: int | None = None,
               batch_size: int = 32, max_tokens: int | None = None, long_text: str = "truncate",
               show_progress: bool | None = None) -> torch.Tensor: ...


@runtime_checkable
class ImageEncoder(Protocol):
    """An image tower.

    ``encode`` returns ``(vectors, indices, failures)``: float32 CPU unit rows for the inputs that decoded,
    their positions in ``images``, and an :class:`ImageFailure` for each other input
    (``on_error="collect"``; ``"raise"`` raises the first :class:`~multimodal_embed.ImageDecodeError`).
    """

    dim: int
    scoring: Scoring

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    def encode(self, images: Sequence[ImageInput], *, batch_size: int = 32, num_workers: int | None = None,
               show_progress: bool | None = None, on_error: str = "raise"
               ) -> tuple[torch.Tensor, list[int], list[ImageFailure]]: ...


def describe_text(encoder: TextEncoder) -> dict[str, Any]:
    """The text tower's part of :attr:`Embedder.info <multimodal_embed.Embedder.info>` (name and revision aside)."""
    return {"dim": encoder.dim, "max_length": encoder.max_length, "encoder": type(encoder).__name__,
            "prefixes": dict(encoder.prefixes), "matryoshka_dims": list(encoder.matryoshka_dims)}


def matryoshka_size(dimensionality: Any, full: int, trained: Sequence[int]) -> int:
    """The output size for ``dimensionality`` (``None``: ``full``), or :class:`~multimodal_embed.InvalidInputError`:
    an int (numpy integers too, never a bool or a float), below ``full`` only for a model trained at the sizes
    ``trained`` (Matryoshka) and within their range; an untrained size in range is allowed with a warning."""
    import logging

    from .errors import InvalidInputError
    from .utils import as_int

    if dimensionality is None:
        return full
    dimensionality = as_int(dimensionality, "dimensionality")
    if dimensionality == full:
        return full
    if not trained:
        raise InvalidInputError(f"this model was not trained for Matryoshka truncation: dimensionality must be None "
                                f"or {full}, got {dimensionality}")
    low = min(trained)
    if not low <= dimensionality <= full:
        raise InvalidInputError(f"dimensionality must be between {low} and {full} (trained: {list(trained)}), "
                                f"got {dimensionality}")
    if dimensionality not in trained:
        logging.getLogger(__name__).warning("dimensionality %d was not trained; trained sizes are %s", dimensionality,
                                            tuple(trained))
    return dimensionality


def truncate_unit(vectors: Any, dim: int) -> Any:
    """Unit rows cut to their first ``dim`` values and renormalised (how image vectors and stored full-size vectors
    take a Matryoshka size); the rows themselves when ``dim`` is their size or more."""
    if dim >= vectors.shape[1]:
        return vectors
    cut = vectors[:, :dim]
    if type(cut).__module__.startswith("torch"):  # the same rule on tensors (a text tower's own output)
        return cut / cut.norm(dim=1, keepdim=True).clamp(min=1e-12)
    import numpy as np

    return (cut / np.maximum(np.linalg.norm(cut, axis=1, keepdims=True), 1e-12)).astype(np.float32)


@dataclass(frozen=True)
class Matryoshka:
    """A text model's Matryoshka recipe: the sizes it was trained at (:func:`matryoshka_size` checks a request
    against them) and whether the pooled vector is layer-normalised (no affine, eps 1e-5) before the cut, as for
    nomic-embed-text-v1.5, or cut as it is (v2-moe); the cut is then L2-normalised (:func:`truncate_unit`)."""

    trained: tuple[int, ...]
    layer_norm: bool = False

    def for_width(self, full: int) -> tuple[int, ...]:
        """The trained sizes a model of width ``full`` can give (``(full,)`` for a narrower test model)."""
        return tuple(d for d in self.trained if d <= full) or (full,)

    def apply(self, pooled: torch.Tensor, dim: int | None = None) -> torch.Tensor:
        """Pooled vectors ``(n, full)`` -> unit rows of size ``dim`` (``None``: the full size)."""
        import torch.nn.functional as F

        if self.layer_norm:
            pooled = F.layer_norm(pooled, (pooled.shape[-1],), eps=1e-5)
        return truncate_unit(F.normalize(pooled, dim=-1), dim or pooled.shape[-1])
