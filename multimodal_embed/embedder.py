"""The :class:`Embedder` facade: one entry point, two verbs, float32 numpy arrays of unit rows."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .encoders import ImageEncoder, Scoring, TextEncoder, matryoshka_size
from .errors import InvalidInputError
from .images import DEFAULT_MAX_PIXELS, ImageInput
from .loading import load_pretrained
from .vision import ImageEmbeddings

logger = logging.getLogger(__name__)


class Embedder:
    """Text (and, with a vision tower, images) in one embedding space.

    Build it with :meth:`from_pretrained`. Every ``embed_*`` method returns a float32 numpy array of shape
    ``(n, d)`` whose rows have unit L2 norm, in input order.
    """

    def __init__(self, text_encoder: TextEncoder | None = None, vision_encoder: ImageEncoder | None = None, *,
                 scoring: Scoring | None = None, info: Mapping[str, Any] | None = None):
        self.text_encoder = text_encoder
        self.vision_encoder = vision_encoder
        tower = text_encoder or vision_encoder
        self._scoring = scoring or (tower.scoring if tower is not None else Scoring())
        self.info: dict[str, Any] = dict(info or {})

    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike | None = None,
        vision: str | os.PathLike | None = None,
        *,
        text: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        revision: str | Mapping[str, str] | None = None,
        cache_dir: str | Path | None = None,
        image_preprocessing: str | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        jpeg_draft: bool = True,
        allow_mismatched_towers: bool = False,
        gpu_decode: bool | None = None,
        precision: str | None = None,
        **text_options: Any,
    ) -> Embedder:
        """Load a model by name.

        Args:
            model: a registry name (``"nomic-embed-v1.5"``, see :func:`multimodal_embed.list_models`),
                ``"open_clip:ARCH/TAG"`` / ``"open_clip:hf-hub:ORG/REPO"``, ``"hf:ORG/REPO"`` (CLIP, SigLIP,
                SigLIP2), a hub id of a text model (``nomic-ai/nomic-embed-text-v1.5``), or a local folder
                (family detected from its files); ``None``: :func:`multimodal_embed.defaults.choose_model`.
            vision: a nomic-embed-vision tower (hub id or folder) to pair with the text model.
            text: the text tower, by keyword (same as ``model`` for a text model).
            device: ``None`` picks CUDA, then MPS, then CPU.
            dtype: ``None`` picks bf16/fp16 on CUDA and fp32 (exact) elsewhere. ``"bfloat16"`` is fast only on CPUs
                with native bf16 (AVX512_BF16/AMX); elsewhere it is emulated, several times slower, and warns.
            revision: a hub revision, or ``{"text": ..., "vision": ...}``; known models default to pinned
                commits.
            cache_dir: the Hugging Face cache to use (default: the hub's own).
            image_preprocessing: nomic only: ``None``/``"config"`` (the folder's preprocessor_config.json) or
                ``"shortest_edge"`` (short side to 224 + center crop, as in nomic's training and evaluation).
            max_pixels: Pillow's decompression-bomb limit for decoded images (``None`` disables it).
            jpeg_draft: nomic only: decode large JPEGs at a reduced DCT scale keeping 2x the input size (cosine
                >= 0.9999 to the exact path); ``False`` for exact parity.
            allow_mismatched_towers: pair a nomic vision tower with a text tower it was not trained against.
            gpu_decode: nomic and aligned models: decode JPEGs and resize/crop on the model's CUDA device (nvJPEG);
                ``None`` (default) turns it on when the image tower runs on CUDA, ``False`` keeps it on the CPU.
            precision: ``None``/``"exact"`` (default), ``"fast"``: what is fast on this CPU (bf16 with native bf16,
                else fp32 through OpenVINO for the towers where that measured faster), or ``"int8"`` (OpenVINO
                int8 weights: smaller, not faster on AVX2); ``info["precision"]`` says what was chosen and why.
                See :mod:`multimodal_embed.precision`.
            **text_options: passed to the nomic text encoder (e.g. ``matryoshka=True``,
                ``rotary_scaling_factor=None``, ``max_length=2048``).
        """
        loaded = load_pretrained(model, text=text, vision=vision, revision=revision, device=device, dtype=dtype,
                                 cache_dir=cache_dir, max_pixels=max_pixels, image_preprocessing=image_preprocessing,
                                 jpeg_draft=jpeg_draft, allow_mismatched_towers=allow_mismatched_towers,
                                 gpu_decode=gpu_decode, text_options=text_options)
        embedder = cls(loaded.text, loaded.image, scoring=loaded.scoring, info=loaded.info)
        if precision is None:
            return embedder
        from .precision import apply_precision  # loaded exactly; the policy swaps or quantises the towers

        return apply_precision(embedder, precision)

    @property
    def dim(self) -> int:
        return (self.text_encoder or self.vision_encoder).dim

    def identity(self) -> dict[str, Any]:
        """What the vectors depend on (and how to load the model again): family, name, each tower's name and
        revision, and the dimension. Stored by :class:`~multimodal_embed.ImageIndex`."""
        def tower(key: str) -> dict[str, Any] | None:
            t = self.info.get(key)
            return {"name": t.get("name"), "revision": t.get("revision")} if t else None

        return {"family": self.info.get("family"), "name": self.info.get("name"), "text": tower("text"),
                "vision": tower("vision"), "dim": self.dim}

    @classmethod
    def from_identity(cls, identity: Mapping[str, Any], *, text_only: bool = False, **kwargs: Any) -> Embedder:
        """Load the model an :meth:`identity` describes. ``text_only=True``: for a model whose text tower is a
        model of its own (``aligned``: the frozen text model the image tower was trained against; ``nomic``: the
        text repository or folder), only that tower, which embeds texts exactly as the whole model does (a text
        query then pays no image tower); other families load whole."""
        name = identity.get("name")
        text_tower = identity.get("text") or {}
        if text_only and identity.get("family") == "aligned" and text_tower.get("name"):
            from .models.aligned import resolve_packaged

            return cls.from_pretrained(text=resolve_packaged(text_tower["name"]), **kwargs)
        if text_only and identity.get("family") == "nomic" and text_tower.get("name"):
            return cls.from_pretrained(text=text_tower["name"], revision=text_tower.get("revision"), **kwargs)
        if name and identity.get("family") != "nomic":
            return cls.from_pretrained(name, **kwargs)
        text, vision = identity.get("text") or {}, identity.get("vision") or {}
        if name:
            return cls.from_pretrained(name, **kwargs)
        return cls.from_pretrained(text=text.get("name"), vision=vision.get("name"),
                                   revision={"text": text.get("revision"), "vision": vision.get("revision")},
                                   **kwargs)

    @property
    def modalities(self) -> list[str]:
        return [m for m, enc in (("text", self.text_encoder), ("image", self.vision_encoder)) if enc is not None]

    @property
    def scoring(self) -> Scoring:
        """How the model scores: ``logit_scale`` and ``logit_bias`` from the checkpoint (``None`` where it has
        none, as for nomic) and ``kind`` (``"softmax"`` for CLIP-style, ``"sigmoid"`` for SigLIP)."""
        return self._scoring

    @property
    def logit_scale(self) -> float | None:
        return self.scoring.logit_scale

    @property
    def logit_bias(self) -> float | None:
        return self.scoring.logit_bias

    @property
    def query_task(self) -> str | None:
        """The task to embed queries and zero-shot labels with (``"search_query"`` for nomic, else ``None``)."""
        prefixes = self.text_encoder.prefixes if self.text_encoder is not None else {}
        return "search_query" if "search_query" in prefixes else None

    @property
    def max_text_length(self) -> int | None:
        """The text tower's context in tokens (nomic: 8192; CLIP: 77; SigLIP: 64)."""
        return self.text_encoder.max_length if self.text_encoder is not None else None

    def count_tokens(self, texts: Sequence[str], task: str | None = "search_document") -> list[int]:
        """Tokens the text tower sees for each text before any truncation: the task prefix and the special tokens
        included (compare with :attr:`max_text_length`). A text too long to be read whole
        (:func:`~multimodal_embed.text.check_texts`) is counted only past that limit: still more than it."""
        from .text import check_texts

        enc = self.text_encoder
        if enc is None:
            raise InvalidInputError("this Embedder has no text tower")
        texts = check_texts(texts, max_length=enc.max_length)  # a huge text: counted to past the limit, not whole
        if hasattr(enc, "token_lengths"):  # CLIP-style towers: no prefixes
            return list(enc.token_lengths([enc.normalize_text(t) for t in texts]))
        return [len(ids) for ids in enc.tokenize(enc.apply_prefix(texts, task))]

    def check_dimensionality(self, dimensionality: int | None) -> int:
        """The output size for ``dimensionality`` (``None``: :attr:`dim`), or :class:`InvalidInputError`: below the
        full size only for Matryoshka models, within their trained range."""
        check = getattr(self.text_encoder, "check_dimensionality", None)
        if check is not None:
            return check(dimensionality)
        trained = getattr(self.text_encoder or self.vision_encoder, "matryoshka_dims", ()) or ()
        return matryoshka_size(dimensionality, int(self.dim), tuple(trained))

    def embed_images(
        self,
        images: Sequence[ImageInput],
        batch_size: int = 32,
        show_progress: bool | None = None,
        *,
        num_workers: int | None = None,
    ) -> np.ndarray:
        """Embed images into ``(len(images), d)`` float32 unit rows, in the text space.

        ``images`` is one image or a list of them (the rule texts follow too: a single item gives one row); each
        may be a path, http(s) URL, bytes, binary file, PIL image or HxWxC uint8 array. Decoding
        and preprocessing run in ``num_workers`` threads, overlapped with the model. The first input that
        cannot be decoded raises :class:`~multimodal_embed.ImageDecodeError` naming it and the reason; use
        :meth:`embed_images_with_errors` to keep every good row instead.
        """
        vectors, _, _ = self._vision().encode(images, batch_size=batch_size, num_workers=num_workers,
                                              show_progress=show_progress, on_error="raise")
        return vectors.numpy().astype(np.float32, copy=False)

    def embed_images_with_errors(
        self,
        images: Sequence[ImageInput],
        batch_size: int = 32,
        show_progress: bool | None = None,
        *,
        num_workers: int | None = None,
    ) -> ImageEmbeddings:
        """Embed every good image and report the others.

        Returns an :class:`~multimodal_embed.vision.ImageEmbeddings`: ``vectors`` (float32 unit rows),
        ``indices`` (the input position of each row) and ``failures`` (index, item, reason for each bad input).
        """
        vectors, indices, failures = self._vision().encode(
            images, batch_size=batch_size, num_workers=num_workers, show_progress=show_progress, on_error="collect")
        return ImageEmbeddings(vectors.numpy().astype(np.float32, copy=False), indices, failures)

    def _vision(self):
        if self.vision_encoder is None:
            raise InvalidInputError("this Embedder has no vision tower: pass vision= to from_pretrained")
        return self.vision_encoder

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
            texts: one string or a list of strings (the empty string is allowed); the result has one row per
                text either way, as for images (:func:`~multimodal_embed.encoders.as_batch`).
            task: the nomic task prefix: ``search_query``, ``search_document`` (default), ``clustering``,
                ``classification``, or ``None`` for no prefix. Models without prefixes ignore it.
            dimensionality: Matryoshka size for models trained for it (nomic v1.5: 64 to 768).
            batch_size: at most this many texts per forward pass.
            long_text: ``"truncate"`` (default; a warning counts the cut texts) or ``"mean"`` (chunks of the
                maximum length, averaged by token count, then normalised).
            show_progress: tqdm bar: ``True``, ``False`` or ``None`` (on for long jobs).
            max_tokens: tokens per batch (the token budget, counting padding where a batch runs padded;
                default 2048 on CPU, 32768 on GPU).
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
        vision = self.info.get("vision", {}).get("name")
        return f"Embedder(text={text!r}, vision={vision!r}, device={self.info.get('device')!r})"
