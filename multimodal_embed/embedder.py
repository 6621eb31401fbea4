"""The :class:`Embedder` facade: one entry point, two verbs, float32 numpy arrays of unit rows."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import hub
from .errors import InvalidInputError
from .images import DEFAULT_MAX_PIXELS, ImageInput
from .utils import resolve_device, resolve_dtype
from .vision import ImageEmbeddings

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


def load_vision_encoder(
    ref: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    device: torch.device,
    dtype: torch.dtype,
    **options: Any,
):
    """Load an image tower from a local folder or a hub id (nomic-embed-vision)."""
    from .errors import ConfigError
    from .vision import NomicVisionEncoder, is_nomic_vision_config

    folder = hub.resolve_folder(ref, revision=revision, files=hub.CONFIG_FILES, cache_dir=cache_dir)
    config = _read_json(folder / "config.json")
    if not is_nomic_vision_config(config):
        raise ConfigError(f"{ref} is not a nomic-embed-vision model (config.json has no image settings)")
    if not Path(os.path.expanduser(str(ref))).is_dir():
        folder = hub.fetch(str(ref), revision=revision, files=hub.CONFIG_FILES + hub.WEIGHT_FILES + hub.IMAGE_FILES,
                           cache_dir=cache_dir)
    return NomicVisionEncoder.from_folder(folder, name=str(ref), device=device, dtype=dtype, **options)


def check_pairing(text_name: str, text_encoder: Any, vision_name: str) -> None:
    """Refuse a nomic vision tower paired with a text tower it was not trained against."""
    from .errors import IncompatibleModelsError
    from .text import NomicTextEncoder
    from .vision import nomic_tower_version

    want = nomic_tower_version(vision_name)
    if not isinstance(text_encoder, NomicTextEncoder):
        raise IncompatibleModelsError(
            f"the vision model {vision_name} was trained against nomic-embed-text, not {text_name}; "
            f"pass allow_mismatched_towers=True to pair them anyway")
    have = "v1.5" if text_encoder.matryoshka else (nomic_tower_version(text_name) or "v1")
    if want is not None and want != have:
        raise IncompatibleModelsError(
            f"the vision model {vision_name} ({want}) was trained against nomic-embed-text-{want}, but the text "
            f"model {text_name} is {have}: their embeddings do not share a space. Load nomic-embed-text-{want}, "
            f"or pass allow_mismatched_towers=True")


def _classify(name: str, revision: Any, cache_dir: str | Path | None) -> tuple[str, str, str | None]:
    """(family, ref, revision) for a model name: nomic | open_clip | hf | vision | text."""
    from . import registry
    from .backends.hf import hf_family
    from .vision import is_nomic_vision_config

    rev = revision if isinstance(revision, str) else None
    if registry.is_known(name):
        spec = registry.lookup(name)
        if spec.family == "nomic":
            return "nomic", name, None
        return spec.family, spec.ref or "", rev or spec.revisions.get("model")
    for scheme in ("open_clip:", "hf:"):
        if name.startswith(scheme):
            return scheme[:-1], name[len(scheme):], rev
    if name.startswith("builtin:"):
        return "aligned", name, None
    path = Path(os.path.expanduser(name))
    if path.is_dir():
        if (path / "open_clip_config.json").is_file():
            return "open_clip", str(path), None
        if (path / "align_config.json").is_file():
            return "aligned", str(path), None
        config = _read_json(path / "config.json")
    elif hub.looks_like_repo_id(name):
        config = _read_json(hub.fetch(name, revision=rev, files=hub.CONFIG_FILES, cache_dir=cache_dir)
                            / "config.json")
    else:
        registry.lookup(name)  # raises with close matches
        raise AssertionError  # pragma: no cover
    if hf_family(config):
        return "hf", name, rev
    if is_nomic_vision_config(config):
        return "vision", name, rev
    return "text", name, rev


class Embedder:
    """Text (and, with a vision tower, images) in one embedding space.

    Build it with :meth:`from_pretrained`. Every ``embed_*`` method returns a float32 numpy array of shape
    ``(n, d)`` whose rows have unit L2 norm, in input order.
    """

    def __init__(self, text_encoder: Any = None, vision_encoder: Any = None, *,
                 info: Mapping[str, Any] | None = None):
        self.text_encoder = text_encoder
        self.vision_encoder = vision_encoder
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
        precision: str | None = None,
        **text_options: Any,
    ) -> Embedder:
        """Load a model by name.

        Args:
            model: a registry name (``"nomic-embed-v1.5"``, see :func:`multimodal_embed.list_models`),
                ``"open_clip:ARCH/TAG"`` / ``"open_clip:hf-hub:ORG/REPO"``, ``"hf:ORG/REPO"`` (CLIP, SigLIP,
                SigLIP2), a hub id of a text model (``nomic-ai/nomic-embed-text-v1.5``), or a local folder
                (family detected from its files).
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
            jpeg_draft: nomic only: decode large JPEGs at a reduced DCT scale that keeps 2x the model's input
                size (pixels within 0.14 in normalised units, cosine >= 0.9999 to the exact path). ``False`` for
                exact parity.
            allow_mismatched_towers: pair a nomic vision tower with a text tower it was not trained against.
            precision: ``None``/``"exact"`` (default) or ``"fast"``: what is fast on this CPU (bf16 with native bf16,
                else int8 weights through OpenVINO); ``info["precision"]`` says what was chosen and why. See
                :mod:`multimodal_embed.precision`.
            **text_options: passed to the nomic text encoder (e.g. ``matryoshka=True``,
                ``rotary_scaling_factor=None``, ``max_length=2048``).
        """
        from . import registry

        if precision is not None:  # load exactly, then let the precision policy swap/quantise the towers
            from .precision import apply_precision

            return apply_precision(cls.from_pretrained(
                model, vision, text=text, device=device, dtype=dtype, revision=revision, cache_dir=cache_dir,
                image_preprocessing=image_preprocessing, max_pixels=max_pixels, jpeg_draft=jpeg_draft,
                allow_mismatched_towers=allow_mismatched_towers, **text_options), precision)
        if model is not None and text is not None:
            raise InvalidInputError("give the model positionally or as text=, not both")
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        if model is not None:
            name = os.fspath(model)
            family, ref, rev = _classify(name, revision, cache_dir)
            if family == "nomic":
                spec = registry.lookup(name)
                if vision is not None:
                    raise InvalidInputError(f"{name} already names both towers; do not pass vision=")
                revs = dict(revision) if isinstance(revision, Mapping) else {}
                text, vision = spec.text, spec.vision
                revision = {"text": revs.get("text") or spec.revisions["text"],
                            "vision": revs.get("vision") or spec.revisions["vision"]}
            elif family in ("open_clip", "hf", "aligned"):
                if vision is not None or text_options:
                    raise InvalidInputError(f"{name} is a {family} model with both towers; vision= and text "
                                            f"options ({sorted(text_options)}) do not apply")
                return cls._from_backend(family, ref, name, revision=rev, cache_dir=cache_dir, device=dev,
                                         dtype=dt, max_pixels=max_pixels)
            elif family == "vision":
                if vision is not None:
                    raise InvalidInputError(f"{name} is an image tower; pass a text model with text=")
                vision = name
            else:
                text = name
        if text is None and vision is None:
            raise InvalidInputError("give a model name, or at least one of text= or vision=")
        revisions = dict(revision) if isinstance(revision, Mapping) else {"text": revision, "vision": None}
        if text is None and not isinstance(revision, Mapping):
            revisions = {"vision": revision}
        info: dict[str, Any] = {"family": "nomic", "device": str(dev), "dtype": str(dt).replace("torch.", ""),
                                "modalities": []}
        if model is not None and registry.is_known(os.fspath(model)):
            info["name"] = registry.lookup(os.fspath(model)).name
        encoder = None
        if text is not None:
            encoder = load_text_encoder(text, revision=revisions.get("text"), cache_dir=cache_dir, device=dev,
                                        dtype=dt, **text_options)
            info["modalities"].append("text")
            info["text"] = {
                "name": str(text),
                "revision": revisions.get("text") or (hub.default_revision(str(text))
                                                      if hub.looks_like_repo_id(str(text)) else None),
                "dim": encoder.dim,
                "max_length": encoder.max_length,
                "encoder": type(encoder).__name__,
                "prefixes": dict(encoder.prefixes),
                "matryoshka_dims": list(encoder.matryoshka_dims),
            }
            if not encoder.prefixes:
                info["family"] = "sentence-transformers"
        vision_encoder = None
        if vision is not None:
            if text is not None and not allow_mismatched_towers:
                check_pairing(str(text), encoder, str(vision))
            vision_encoder = load_vision_encoder(vision, revision=revisions.get("vision"), cache_dir=cache_dir,
                                                 device=dev, dtype=dt, preprocessing=image_preprocessing,
                                                 max_pixels=max_pixels, jpeg_draft=jpeg_draft)
            if encoder is not None and vision_encoder.dim != encoder.dim:
                raise InvalidInputError(f"text ({encoder.dim}) and vision ({vision_encoder.dim}) dimensions differ")
            info["modalities"].append("image")
            info["vision"] = {
                "name": str(vision),
                "revision": revisions.get("vision") or (hub.default_revision(str(vision))
                                                        if hub.looks_like_repo_id(str(vision)) else None),
                "dim": vision_encoder.dim,
                "encoder": type(vision_encoder).__name__,
                "preprocessing": dataclasses.asdict(vision_encoder.preprocessor),
            }
        return cls(encoder, vision_encoder, info=info)

    @classmethod
    def _from_backend(cls, family: str, ref: str, name: str, *, revision: str | None, cache_dir: str | Path | None,
                      device: torch.device, dtype: torch.dtype, max_pixels: int | None) -> Embedder:
        if family == "open_clip":
            from .backends.openclip import load_open_clip as load
        elif family == "aligned":
            from .backends.aligned import load_aligned as load
        else:
            from .backends.hf import load_hf_contrastive as load
        text, vision, details = load(ref, revision=revision, cache_dir=cache_dir, device=device, dtype=dtype,
                                     max_pixels=max_pixels)
        scoring = text.scoring
        info = {
            "family": details["family"], "name": name, "device": str(device),
            "dtype": str(dtype).replace("torch.", ""), "modalities": ["text", "image"],
            "text": {"name": details.get("text_name", ref), "revision": details.get("revision"), "dim": text.dim,
                     "max_length": text.max_length, "encoder": type(text).__name__,
                     "prefixes": dict(getattr(text, "prefixes", {})),
                     "matryoshka_dims": list(getattr(text, "matryoshka_dims", ()))},
            "vision": {"name": ref, "revision": details.get("revision"), "dim": vision.dim,
                       "encoder": type(vision).__name__, "preprocessing": details.get("preprocessing")},
            "scoring": dataclasses.asdict(scoring),
        }
        return cls(text, vision, info=info)

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
    def from_identity(cls, identity: Mapping[str, Any], **kwargs: Any) -> Embedder:
        """Load the model an :meth:`identity` describes."""
        name = identity.get("name")
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
    def scoring(self):
        """How the model scores: ``logit_scale`` and ``logit_bias`` from the checkpoint (``None`` where it has
        none, as for nomic) and ``kind`` (``"softmax"`` for CLIP-style, ``"sigmoid"`` for SigLIP)."""
        from .backends.common import Scoring

        return getattr(self.text_encoder, "scoring", None) or getattr(self.vision_encoder, "scoring", None) \
            or Scoring()

    @property
    def logit_scale(self) -> float | None:
        return self.scoring.logit_scale

    @property
    def logit_bias(self) -> float | None:
        return self.scoring.logit_bias

    @property
    def query_task(self) -> str | None:
        """The task to embed queries and zero-shot labels with (``"search_query"`` for nomic, else ``None``)."""
        prefixes = getattr(self.text_encoder, "prefixes", {}) or {}
        return "search_query" if "search_query" in prefixes else None

    @property
    def max_text_length(self) -> int | None:
        """The text tower's context in tokens (nomic: 8192; CLIP: 77; SigLIP: 64)."""
        return getattr(self.text_encoder, "max_length", None)

    def embed_images(
        self,
        images: Sequence[ImageInput],
        batch_size: int = 32,
        show_progress: bool | None = None,
        *,
        num_workers: int | None = None,
    ) -> np.ndarray:
        """Embed images into ``(len(images), d)`` float32 unit rows, in the text space.

        Inputs may be paths, http(s) URLs, bytes, binary files, PIL images or HxWxC uint8 arrays. Decoding
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
        vision = self.info.get("vision", {}).get("name")
        return f"Embedder(text={text!r}, vision={vision!r}, device={self.info.get('device')!r})"
