"""open_clip models: built by open_clip's own factory, fed by this project's robust image decoder.

Names (after the ``open_clip:`` scheme): ``ARCH/TAG`` (a built-in architecture and pretrained tag, downloaded
by open_clip), ``hf-hub:ORG/REPO`` (an open_clip repository on the hub, fetched at a revision through the hub
cache), ``local-dir:PATH`` or a local folder with ``open_clip_config.json``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import hub
from ..errors import MissingDependencyError, ModelNotFoundError
from ..images import DEFAULT_MAX_PIXELS
from ..vision import ImageEncoder
from .common import ContextTextEncoder, Scoring

logger = logging.getLogger(__name__)

OPEN_CLIP_FILES = ("open_clip_config.json",)
# safetensors first; a pickle only if that is all a repository has (open_clip reads it with weights_only=True)
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                     "open_clip_pytorch_model.bin")


def _import_open_clip():
    try:
        import open_clip
    except ImportError as exc:  # pragma: no cover - a core dependency, but keep the message clear
        raise MissingDependencyError("open_clip models need `pip install open_clip_torch`") from exc
    return open_clip


def _offline_hint() -> str:
    reason = hub.offline_reason()
    return f"{reason}; " if reason else ""


def is_open_clip_folder(folder: str | os.PathLike) -> bool:
    return (Path(folder) / "open_clip_config.json").is_file()


def _fetch_hf_hub(repo: str, revision: str | None, cache_dir: str | Path | None) -> Path:
    """An open_clip hub repository into the hub cache at ``revision``."""
    hub.fetch(repo, revision=revision, files=OPEN_CLIP_FILES, cache_dir=cache_dir)
    return hub.fetch_first(repo, OPEN_CLIP_WEIGHTS, revision=revision, cache_dir=cache_dir)


def load_open_clip(
    ref: str,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    device: torch.device,
    dtype: torch.dtype,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> tuple[OpenClipTextEncoder, OpenClipImageEncoder, dict[str, Any]]:
    """Build an open_clip model and its two towers; ``ref`` is the name after ``open_clip:``."""
    open_clip = _import_open_clip()
    info: dict[str, Any] = {"family": "open_clip", "name": ref}
    local = Path(os.path.expanduser(ref.removeprefix("local-dir:")))
    if ref.startswith("local-dir:") or local.is_dir():
        if not is_open_clip_folder(local):
            raise ModelNotFoundError(f"{local} is not an open_clip folder (no open_clip_config.json)")
        name, pretrained = f"local-dir:{local}", None
    elif ref.startswith("hf-hub:"):
        repo = ref.removeprefix("hf-hub:")
        folder = _fetch_hf_hub(repo, revision, cache_dir)
        name, pretrained = f"local-dir:{folder}", None
        info["revision"] = revision or hub.default_revision(repo)
    else:
        arch, _, tag = ref.partition("/")
        if arch not in open_clip.list_models():
            import difflib

            close = difflib.get_close_matches(arch, open_clip.list_models(), n=3)
            raise ModelNotFoundError(f"open_clip has no architecture {arch!r}" +
                                     (f"; did you mean {', '.join(close)}?" if close else ""))
        if not tag:
            tags = [t for a, t in open_clip.list_pretrained() if a == arch]
            raise ModelNotFoundError(f"give a pretrained tag: open_clip:{arch}/TAG, one of {tags}")
        name, pretrained = arch, tag
        info["revision"] = None  # open_clip resolves built-in tags itself and does not pin them
        tag_cfg = open_clip.get_pretrained_cfg(arch, tag)
        if not tag_cfg and not os.path.isfile(tag):
            tags = [t for a, t in open_clip.list_pretrained() if a == arch]
            raise ModelNotFoundError(f"open_clip has no pretrained tag {tag!r} for {arch}; known tags: {tags}")
        if tag_cfg:
            try:  # fetch (or find in the cache) first, so a failure is one clear error rather than log noise
                open_clip.download_pretrained(tag_cfg, cache_dir=str(cache_dir) if cache_dir else None)
            except Exception as exc:  # noqa: BLE001 - hub, HTTP and OS errors all mean "not available"
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise ModelNotFoundError(
                    f"open_clip weights for {arch}/{tag} are not in the cache and could not be downloaded "
                    f"({_offline_hint()}{first}). Download them once where the hub is reachable, or pass a local "
                    f"open_clip folder.") from None
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(  # weights_only=True: tensors, never code
            name, pretrained=pretrained, cache_dir=str(cache_dir) if cache_dir else None, weights_only=True)
        tokenizer = open_clip.get_tokenizer(name, cache_dir=str(cache_dir) if cache_dir else None)
    except (RuntimeError, OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelNotFoundError(
            f"open_clip model {ref!r} could not be loaded ({_offline_hint()}{first}). Download it once where the hub "
            f"is reachable, or pass a local open_clip folder.") from None
    model = model.eval().to(device=device, dtype=dtype)
    scale = getattr(model, "logit_scale", None)
    bias = getattr(model, "logit_bias", None)
    scoring = Scoring(
        logit_scale=float(scale.detach().float().exp()) if scale is not None else None,
        logit_bias=float(bias.detach().float()) if bias is not None else None,
        kind="sigmoid" if bias is not None else "softmax",
    )
    text = OpenClipTextEncoder(model, tokenizer, scoring=scoring)
    vision = OpenClipImageEncoder(model, preprocess, max_pixels=max_pixels, scoring=scoring)
    info["preprocessing"] = {k: (list(v) if isinstance(v, tuple) else v)
                             for k, v in open_clip.get_model_preprocess_cfg(model).items()}
    return text, vision, info


class OpenClipTextEncoder(ContextTextEncoder):
    def __init__(self, model: torch.nn.Module, tokenizer: Any, *, scoring: Scoring | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.scoring = scoring or Scoring()
        self.max_length = int(getattr(tokenizer, "context_length", None) or 77)
        with torch.inference_mode():
            probe = model.encode_text(tokenizer(["probe"]).to(next(model.parameters()).device))
        self.dim = int(probe.shape[-1])

    def token_lengths(self, texts: list[str]) -> list[int]:
        tok = self.tokenizer
        if hasattr(tok, "encode"):  # SimpleTokenizer: BPE ids + start and end tokens
            return [len(tok.encode(t)) + 2 for t in texts]
        inner = getattr(tok, "tokenizer", None)
        if inner is not None:  # HFTokenizer
            clean = getattr(tok, "clean_fn", lambda s: s)
            return [len(ids) for ids in inner([clean(t) for t in texts])["input_ids"]]
        return [0] * len(texts)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return {"text": self.tokenizer(texts)}

    def features(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model.encode_text(inputs["text"])


class OpenClipImageEncoder(ImageEncoder):
    """Images decoded by :func:`~multimodal_embed.images.load_image`, then the model's own eval transform."""

    def __init__(self, model: torch.nn.Module, transform: Any, *, max_pixels: int | None,
                 scoring: Scoring | None = None):
        super().__init__(max_pixels=max_pixels, jpeg_draft=False, scoring=scoring)
        self.model = model
        self.transform = transform
        dim = getattr(model.visual, "output_dim", None)
        if dim is None:
            size = getattr(model.visual, "image_size", 224)
            size = size if isinstance(size, (tuple, list)) else (size, size)
            with torch.inference_mode():
                dim = model.encode_image(torch.zeros(1, 3, *size, device=self.device, dtype=self.dtype)).shape[-1]
        self.dim = int(dim)

    def preprocess(self, img: Any) -> np.ndarray:
        return self.transform(img).numpy()

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(batch)
