"""The :class:`Embedder` facade: one entry point, two verbs, float32 numpy arrays of unit rows."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from . import hub
from .errors import InvalidInputError
from .utils import resolve_device, resolve_dtype

logger = logging.getLogger(__name__)


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def load_text_encoder(
    ref: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    device: torch.device,
    dtype: torch.dtype,
    **options: Any,
):
    """Load a text encoder from a local folder or a hub id (nomic-embed-text, or a sentence-transformers folder)."""
    from .text import NomicTextEncoder, SentenceTransformerTextEncoder

    folder = hub.resolve_folder(ref, revision=revision, files=hub.CONFIG_FILES,
                                optional=("modules.json",), cache_dir=cache_dir)
    config = _read_json(folder / "config.json")
    remote = not Path(os.path.expanduser(str(ref))).is_dir()
    if config.get("model_type") == "nomic_bert":
        if remote:
            folder = hub.fetch(str(ref), revision=revision, files=hub.CONFIG_FILES + hub.WEIGHT_FILES,
                               optional=hub.TOKENIZER_FILES, cache_dir=cache_dir)
        return NomicTextEncoder.from_folder(folder, name=str(ref), device=device, dtype=dtype, **options)
    if remote:
        folder = hub.fetch(str(ref), revision=revision, files=hub.CONFIG_FILES + hub.WEIGHT_FILES,
                           optional=hub.TOKENIZER_FILES + hub.SENTENCE_TRANSFORMERS_FILES, cache_dir=cache_dir)
    if options:
        raise InvalidInputError(f"options {sorted(options)} do not apply to the text model {ref}")
    return SentenceTransformerTextEncoder.from_folder(folder, device=device, dtype=dtype)


class Embedder:
    """Text (and, with a vision tower, images) in one embedding space.

    Build it with :meth:`from_pretrained`. Every ``embed_*`` method returns a float32 numpy array of shape
    ``(n, d)`` whose rows have unit L2 norm, in input order.
    """

    def __init__(self, text_encoder: Any = None, *, info: Mapping[str, Any] | None = None):
        self.text_encoder = text_encoder
        self.info: dict[str, Any] = dict(info or {})

    @classmethod
    def from_pretrained(
        cls,
        text: str | os.PathLike | None = None,
        vision: str | os.PathLike | None = None,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        revision: str | Mapping[str, str] | None = None,
        cache_dir: str | Path | None = None,
        **text_options: Any,
    ) -> "Embedder":
        """Load the towers.

        Args:
            text: a hub id (``nomic-ai/nomic-embed-text-v1.5``) or a local folder (original nomic format,
                transformers-5 native format, or a sentence-transformers folder).
            vision: the image tower (hub id or folder).
            device: ``None`` picks CUDA, then MPS, then CPU.
            dtype: ``None`` picks bf16/fp16 on CUDA and fp32 elsewhere.
            revision: a hub revision for the text model, or ``{"text": ..., "vision": ...}``; the known nomic
                repositories default to pinned commits.
            cache_dir: the Hugging Face cache to use (default: the hub's own).
            **text_options: passed to the text encoder (e.g. ``matryoshka=True``,
                ``rotary_scaling_factor=None``, ``max_length=2048``).
        """
        if text is None and vision is None:
            raise InvalidInputError("give at least one of text= or vision=")
        if vision is not None:
            raise InvalidInputError("vision towers are not available in this version")
        revisions = dict(revision) if isinstance(revision, Mapping) else {"text": revision}
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        encoder = load_text_encoder(text, revision=revisions.get("text"), cache_dir=cache_dir, device=dev,
                                    dtype=dt, **text_options)
        info = {
            "text": {
                "name": str(text),
                "revision": revisions.get("text") or (hub.default_revision(str(text))
                                                      if hub.looks_like_repo_id(str(text)) else None),
                "dim": encoder.dim,
                "max_length": encoder.max_length,
                "encoder": type(encoder).__name__,
                "prefixes": dict(encoder.prefixes),
                "matryoshka_dims": list(encoder.matryoshka_dims),
            },
            "device": str(dev),
            "dtype": str(dt).replace("torch.", ""),
        }
        return cls(encoder, info=info)

    @property
    def dim(self) -> int:
        return self.text_encoder.dim

    def embed_text(
        self,
        texts: Sequence[str],
        task: str | None = "search_document",
        dimensionality: int | None = None,
        batch_size: int = 32,
        long_text: str = "truncate",
        show_progress: bool | None = None,
        *,
        max_tokens: int | None = None,
    ) -> np.ndarray:
        """Embed texts into ``(len(texts), d)`` float32 unit rows.

        Args:
            texts: a list of strings (the empty string is allowed).
            task: the nomic task prefix: ``search_query``, ``search_document`` (default), ``clustering``,
                ``classification``, or ``None`` for no prefix. Models without prefixes ignore it.
            dimensionality: Matryoshka size for models trained for it (nomic v1.5: 64 to 768).
            batch_size: at most this many texts per forward pass.
            long_text: ``"truncate"`` (default; a warning counts the cut texts) or ``"mean"`` (chunks of the
                maximum length, averaged by token count, then normalised).
            show_progress: tqdm bar: ``True``, ``False`` or ``None`` (on for long jobs).
            max_tokens: padded tokens per batch (the token budget; default 2048 on CPU, 32768 on GPU).
        """
        if self.text_encoder is None:
            raise InvalidInputError("this Embedder has no text tower")
        out = self.text_encoder.encode(
            texts, task=task, dimensionality=dimensionality, batch_size=batch_size, max_tokens=max_tokens,
            long_text=long_text, show_progress=show_progress,
        )
        return out.numpy().astype(np.float32, copy=False)

    @staticmethod
    def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Cosine similarity matrix ``(len(a), len(b))`` of two sets of embeddings."""
        a = np.atleast_2d(np.asarray(a, dtype=np.float32))
        b = np.atleast_2d(np.asarray(b, dtype=np.float32))
        if a.shape[1] != b.shape[1]:
            raise InvalidInputError(f"dimension mismatch: {a.shape[1]} vs {b.shape[1]}")
        a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
        b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
        return a @ b.T

    def __repr__(self) -> str:
        text = self.info.get("text", {}).get("name")
        return f"Embedder(text={text!r}, device={self.info.get('device')!r})"
