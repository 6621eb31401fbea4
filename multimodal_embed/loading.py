"""Model loading: a name is parsed into a family (a pure step), and one table maps each family to its loader.

    parse_model_name("clip-vit-b-32-laion2b")     -> ModelRef(family="open_clip", ref="hf-hub:laion/...", ...)
    detect_family(ref)                            -> a local folder or hub id: its family, from its files
    FAMILIES[family].loader(ref, options)         -> LoadedModel(text, image, scoring, info)

Adding a backend family is one new module in ``backends/`` with a ``load_*`` function (same signature as
:func:`multimodal_embed.backends.hf.load_hf_contrastive`, returning ``(text, image, details)``) plus one row in
:data:`FAMILIES`. The native nomic towers (and a lone text or vision tower) load through :func:`load_towers`.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import hub, registry
from .encoders import ImageEncoder, Scoring, TextEncoder, describe_text
from .errors import ConfigError, IncompatibleModelsError, InvalidInputError, NotAModelFolderError
from .images import DEFAULT_MAX_PIXELS
from .utils import read_json, resolve_device, resolve_dtype

__all__ = ["FAMILIES", "Family", "LoadOptions", "LoadedModel", "ModelRef", "check_pairing", "detect_family",
           "load", "load_text_encoder", "load_towers", "load_vision_encoder", "parse_model_name"]


@dataclass(frozen=True)
class Family:
    """A model family with both towers in one checkpoint, loaded by a backend module.

    ``loader`` is ``"module:function"`` (imported on first use); ``scheme`` is the name prefix selecting it
    (kept in the ref when ``keep_scheme``); ``marker`` a file that identifies a local folder of the family;
    ``model_types`` the ``config.json`` ``model_type`` values that identify a hub id or folder.
    """

    loader: str
    scheme: str | None = None
    keep_scheme: bool = False
    marker: str | None = None
    model_types: tuple[str, ...] = ()

    def load_function(self) -> Callable[..., tuple[Any, Any, dict[str, Any]]]:
        module, _, function = self.loader.partition(":")
        return getattr(importlib.import_module(module), function)


# family -> loader: the one place a backend is registered
FAMILIES: dict[str, Family] = {
    "open_clip": Family("multimodal_embed.backends.openclip:load_open_clip", scheme="open_clip:",
                        marker="open_clip_config.json"),
    "hf": Family("multimodal_embed.backends.hf:load_hf_contrastive", scheme="hf:",
                 model_types=("clip", "siglip", "siglip2")),
    "aligned": Family("multimodal_embed.backends.aligned:load_aligned", scheme="builtin:", keep_scheme=True,
                      marker="align_config.json"),
}
NATIVE = ("nomic", "text", "vision")  # loaded tower by tower by load_towers
MODEL_FILES = ("config.json", "modules.json")  # a folder with neither (nor a family's marker) is not a model


@dataclass(frozen=True)
class ModelRef:
    """A parsed model name: ``family`` (a :data:`FAMILIES` key, ``nomic``, ``text``, ``vision``, or ``None``
    until :func:`detect_family` has looked at the files), what its loader takes, and the revision to load."""

    name: str
    family: str | None
    ref: str
    revision: str | None = None
    spec: registry.ModelSpec | None = None


@dataclass(frozen=True)
class LoadOptions:
    """Everything a loader needs besides the model's name."""

    device: torch.device
    dtype: torch.dtype
    cache_dir: str | Path | None = None
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    image_preprocessing: str | None = None
    jpeg_draft: bool = True
    allow_mismatched_towers: bool = False
    gpu_decode: bool | None = None
    text_options: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class LoadedModel:
    """What every loader returns: the towers (either may be ``None`` for a lone tower), how the model scores,
    and the description that becomes :attr:`Embedder.info <multimodal_embed.Embedder.info>`."""

    text: TextEncoder | None
    image: ImageEncoder | None
    scoring: Scoring
    info: dict[str, Any]


# -- names ---------------------------------------------------------------------------------------------------
def parse_model_name(name: str, revision: str | Mapping[str, str] | None = None) -> ModelRef:
    """Registry names and scheme-qualified names, without touching the disk or the network. Anything else
    (a local folder, a hub id) comes back with ``family=None`` for :func:`detect_family`."""
    rev = revision if isinstance(revision, str) else None
    if registry.is_known(name):
        spec = registry.lookup(name)
        if spec.family == "nomic":
            return ModelRef(name, "nomic", name, None, spec)
        return ModelRef(name, spec.family, spec.ref or "", rev or spec.revisions.get("model"), spec)
    for family, fam in FAMILIES.items():
        if fam.scheme and name.startswith(fam.scheme):
            ref = name if fam.keep_scheme else name[len(fam.scheme):]
            return ModelRef(name, family, ref, None if fam.keep_scheme else rev)
    return ModelRef(name, None, name, rev)


def _read_json(path: Path) -> dict[str, Any]:
    return read_json(path) if os.path.lexists(path) else {}  # present but not a regular file: ConfigError


def detect_family(model: ModelRef, cache_dir: str | Path | None = None) -> ModelRef:
    """The family of a local folder (marker files, then ``config.json``) or a hub id (its ``config.json``)."""
    if model.family is not None:
        return model
    name = model.name
    path = Path(os.path.expanduser(name))
    if path.is_dir():
        for family, fam in FAMILIES.items():
            if fam.marker and (path / fam.marker).is_file():
                return ModelRef(name, family, str(path), None)
        if not any(os.path.lexists(path / f) for f in MODEL_FILES):  # a FIFO named config.json: read_json refuses
            markers = sorted({*MODEL_FILES, *(fam.marker for fam in FAMILIES.values() if fam.marker)})
            raise NotAModelFolderError(f"{name} is not a model folder (it has none of {', '.join(markers)}); give a "
                                       f"model name (see `mmembed models`) or a downloaded model's folder")
        config = _read_json(path / "config.json")
    elif hub.looks_like_repo_id(name):
        config = _read_json(hub.fetch(name, revision=model.revision, files=hub.CONFIG_FILES, cache_dir=cache_dir)
                            / "config.json")
    else:
        registry.lookup(name)  # raises with close matches
        raise AssertionError  # pragma: no cover
    for family, fam in FAMILIES.items():
        if config.get("model_type") in fam.model_types:
            return ModelRef(name, family, name, model.revision)
    from .vision import is_nomic_vision_config

    return ModelRef(name, "vision" if is_nomic_vision_config(config) else "text", name, model.revision)


# -- loading -------------------------------------------------------------------------------------------------
def load_pretrained(model: str | os.PathLike | None, *, text: str | os.PathLike | None = None,
                    vision: str | os.PathLike | None = None, revision: str | Mapping[str, str] | None = None,
                    device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
                    **options: Any) -> LoadedModel:
    """Everything :meth:`Embedder.from_pretrained <multimodal_embed.Embedder.from_pretrained>` does before its
    precision policy: resolve device and dtype, parse and detect the name, load the towers, set up GPU decoding.
    ``options`` are the remaining :class:`LoadOptions` fields."""
    if model is not None and text is not None:
        raise InvalidInputError("give the model positionally or as text=, not both")
    if model is None and text is None and vision is None:
        from .defaults import default_model_name

        model = default_model_name()  # the toolkit's one default rule
    dev = resolve_device(device)
    load_options = LoadOptions(device=dev, dtype=resolve_dtype(dtype, dev), **options)
    parsed = None if model is None else detect_family(parse_model_name(os.fspath(model), revision),
                                                      load_options.cache_dir)
    loaded = load(parsed, load_options, text=None if text is None else os.fspath(text),
                  vision=None if vision is None else os.fspath(vision), revision=revision)
    apply_gpu_decode(loaded.image, load_options.gpu_decode)
    spec = parsed.spec if parsed is not None else None
    for role in ("text", "vision"):  # each tower's license, from the registry's one table (None: not listed)
        tower = loaded.info.get(role)
        if isinstance(tower, dict):
            tower["license"] = spec.licenses[role] if spec else registry.tower_license(str(tower.get("name")), role)
    return loaded


def load(model: ModelRef | None, options: LoadOptions, *, text: str | None = None, vision: str | None = None,
         revision: str | Mapping[str, str] | None = None) -> LoadedModel:
    """Load a parsed, family-detected model (and/or the ``text=`` / ``vision=`` towers) with ``options``."""
    if model is not None and model.family in FAMILIES:
        if vision is not None or options.text_options:
            raise InvalidInputError(f"{model.name} is a {model.family} model with both towers; vision= and text "
                                    f"options ({sorted(options.text_options)}) do not apply")
        return load_backend(model, options)
    if model is not None:
        text, vision, revision = _native_towers(model, text, vision, revision)
    if text is None and vision is None:
        raise InvalidInputError("give a model name, or at least one of text= or vision=")
    revisions = dict(revision) if isinstance(revision, Mapping) else {"text": revision, "vision": None}
    if text is None and not isinstance(revision, Mapping):
        revisions = {"vision": revision}
    return load_towers(text, vision, revisions=revisions, options=options,
                       name=model.spec.name if model is not None and model.spec is not None else None)


def _native_towers(model: ModelRef, text: str | None, vision: str | None, revision: Any
                   ) -> tuple[str | None, str | None, Any]:
    """The ``(text, vision, revision)`` a native name stands for (a registry pair, or one tower)."""
    if model.family == "nomic":
        spec = model.spec
        assert spec is not None
        if vision is not None and spec.vision is not None:
            raise InvalidInputError(f"{model.name} already names both towers; do not pass vision=")
        revs = dict(revision) if isinstance(revision, Mapping) else {}
        return spec.text, spec.vision or vision, {"text": revs.get("text") or spec.revisions["text"],
                                                  "vision": revs.get("vision") or spec.revisions.get("vision")}
    if model.family == "vision":
        if vision is not None:
            raise InvalidInputError(f"{model.name} is an image tower; pass a text model with text=")
        return text, model.name, revision
    return model.name, vision, revision


def load_backend(model: ModelRef, options: LoadOptions) -> LoadedModel:
    """A both-tower family through its :data:`FAMILIES` loader."""
    text, vision, details = FAMILIES[model.family].load_function()(  # type: ignore[index]
        model.ref, revision=model.revision, cache_dir=options.cache_dir, device=options.device,
        dtype=options.dtype, max_pixels=options.max_pixels)
    scoring = text.scoring
    info = {
        "family": details["family"], "name": model.name, **_runtime(options), "modalities": ["text", "image"],
        "text": {"name": details.get("text_name", model.ref), "revision": details.get("revision"),
                 **describe_text(text)},
        "vision": {"name": model.ref, "revision": details.get("revision"), "dim": vision.dim,
                   "encoder": type(vision).__name__, "preprocessing": details.get("preprocessing")},
        "scoring": dataclasses.asdict(scoring),
    }
    return LoadedModel(text, vision, scoring, info)


def _runtime(options: LoadOptions) -> dict[str, str]:
    return {"device": str(options.device), "dtype": str(options.dtype).replace("torch.", "")}


def _revision(name: str, given: str | None) -> str | None:
    return given or (hub.default_revision(name) if hub.looks_like_repo_id(name) else None)


def load_towers(text: str | os.PathLike | None, vision: str | os.PathLike | None, *,
                revisions: Mapping[str, str | None], options: LoadOptions, name: str | None = None) -> LoadedModel:
    """The native towers: a nomic text and/or vision tower, or a sentence-transformers text model; ``name`` is
    the registry name they were loaded by, if any."""
    info: dict[str, Any] = {"family": "nomic", **_runtime(options), "modalities": []}
    if name is not None:
        info["name"] = name
    encoder = None
    if text is not None:
        encoder = load_text_encoder(text, revision=revisions.get("text"), cache_dir=options.cache_dir,
                                    device=options.device, dtype=options.dtype, **options.text_options)
        info["modalities"].append("text")
        info["text"] = {"name": str(text), "revision": _revision(str(text), revisions.get("text")),
                        **describe_text(encoder)}
        if not encoder.prefixes:
            info["family"] = "sentence-transformers"
    vision_encoder = None
    if vision is not None:
        marker = FAMILIES["aligned"].marker
        if marker and (Path(os.path.expanduser(str(vision))) / marker).is_file():
            raise IncompatibleModelsError(
                f"{vision} is an aligned model (mmembed align): its image tower comes with the text model it was "
                f"trained against, so load the folder by itself: Embedder.from_pretrained({str(vision)!r})")
        if text is not None and not options.allow_mismatched_towers:
            check_pairing(str(text), encoder, str(vision))
        vision_encoder = load_vision_encoder(
            vision, revision=revisions.get("vision"), cache_dir=options.cache_dir, device=options.device,
            dtype=options.dtype, preprocessing=options.image_preprocessing, max_pixels=options.max_pixels,
            jpeg_draft=options.jpeg_draft)
        if encoder is not None and vision_encoder.dim != encoder.dim:
            raise InvalidInputError(f"text ({encoder.dim}) and vision ({vision_encoder.dim}) dimensions differ")
        info["modalities"].append("image")
        info["vision"] = {"name": str(vision), "revision": _revision(str(vision), revisions.get("vision")),
                          "dim": vision_encoder.dim, "encoder": type(vision_encoder).__name__,
                          "preprocessing": dataclasses.asdict(vision_encoder.preprocessor)}
    scoring = (encoder or vision_encoder).scoring  # type: ignore[union-attr]
    return LoadedModel(encoder, vision_encoder, scoring, info)


def load_text_encoder(
    ref: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    device: torch.device,
    dtype: torch.dtype,
    **options: Any,
) -> TextEncoder:
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
) -> ImageEncoder:
    """Load an image tower from a local folder or a hub id (nomic-embed-vision)."""
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
    from .text import NomicTextEncoder
    from .vision import nomic_tower_version

    want = nomic_tower_version(vision_name)
    if not isinstance(text_encoder, NomicTextEncoder):
        raise IncompatibleModelsError(
            f"the vision model {vision_name} was trained against nomic-embed-text, not {text_name}; "
            f"pass allow_mismatched_towers=True to pair them anyway")
    if text_encoder.version == "v2-moe":
        raise IncompatibleModelsError(
            f"the text model {text_name} is nomic-embed-text-v2-moe, a text-only model: no nomic vision tower "
            f"(here {vision_name}) was trained against it, so their embeddings do not share a space. Train an image "
            f"tower against it (`mmembed align --text nomic-ai/nomic-embed-text-v2-moe ...`) and load that aligned "
            f"folder, or pass allow_mismatched_towers=True")
    have = "v1.5" if text_encoder.matryoshka else (nomic_tower_version(text_name) or "v1")
    if want is not None and want != have:
        raise IncompatibleModelsError(
            f"the vision model {vision_name} ({want}) was trained against nomic-embed-text-{want}, but the text "
            f"model {text_name} is {have}: their embeddings do not share a space. Load nomic-embed-text-{want}, "
            f"or pass allow_mismatched_towers=True")


def apply_gpu_decode(image: Any, gpu_decode: bool | None) -> None:
    """Pass ``gpu_decode`` to an image tower that supports it; asking another tower for it is an error."""
    if image is None:
        return
    if hasattr(image, "jpeg_decoder"):
        image.gpu_decode = gpu_decode
    elif gpu_decode:
        raise InvalidInputError(f"gpu_decode=True applies to nomic and aligned models, not to {type(image).__name__}")
