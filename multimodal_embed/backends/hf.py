"""Hugging Face ``CLIPModel``, ``SiglipModel`` and ``Siglip2Model`` with their processors.

The pitfalls are handled here rather than left to the caller: SigLIP text is padded to ``max_length`` (64) as in
training, because the text tower pools the last position; SigLIP's tokenizer canonicalises text (lower case,
punctuation removed) and SigLIP2 was trained on lower-cased text; SigLIP scores with a sigmoid and a bias.
Weights are loaded from safetensors (an old ``pytorch_model.bin`` only through ``torch.load(weights_only=True)``);
no remote code.
"""

from __future__ import annotations

import logging
import os
import re
import string
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import hub
from ..errors import ConfigError, ModelNotFoundError
from ..images import DEFAULT_MAX_PIXELS
from ..utils import load_tokenizer, read_json
from ..vision import ImageEncoder
from .common import ContextTextEncoder, Scoring, pooled

logger = logging.getLogger(__name__)

FAMILIES = {"clip": "CLIPModel", "siglip": "SiglipModel", "siglip2": "Siglip2Model"}
HF_FILES = ("config.json",)
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # the pickle only through torch.load(weights_only=True)
HF_OPTIONAL = ("preprocessor_config.json", "processor_config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "vocab.json", "merges.txt", "spiece.model")


def hf_family(config: dict[str, Any]) -> str | None:
    kind = config.get("model_type")
    return kind if kind in FAMILIES else None


def canonicalize_siglip(text: str) -> str:
    """big_vision's text canonicalisation for SigLIP: lower case, no punctuation, single spaces."""
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return re.sub(r"\s+", " ", text).strip()


def load_hf_contrastive(
    ref: str,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    device: torch.device,
    dtype: torch.dtype,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> tuple[HFTextEncoder, HFImageEncoder, dict[str, Any]]:
    """Load a CLIP / SigLIP / SigLIP2 folder or hub repository (``ref`` is the name after ``hf:``)."""
    import transformers

    local = Path(os.path.expanduser(ref))
    folder = hub.resolve_folder(ref, revision=revision, files=HF_FILES, optional=HF_OPTIONAL, cache_dir=cache_dir)
    if not local.is_dir():  # safetensors first; an old pickle checkpoint only if that is all there is
        hub.fetch_first(ref, HF_WEIGHTS, revision=revision, cache_dir=cache_dir)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise ModelNotFoundError(f"{folder} has no config.json")
    config = read_json(cfg_path)
    family = hf_family(config)
    if family is None:
        raise ConfigError(f"{ref}: model_type {config.get('model_type')!r} is not one of {sorted(FAMILIES)}")
    safetensors = (folder / "model.safetensors").is_file()
    if not safetensors and not (folder / "pytorch_model.bin").is_file():
        raise ModelNotFoundError(f"{ref}: no model.safetensors (or pytorch_model.bin) in {folder}")
    model_cls = getattr(transformers, FAMILIES[family])
    # transformers reads a pickle checkpoint with torch.load(weights_only=True): tensors only, never code
    model = model_cls.from_pretrained(str(folder), use_safetensors=safetensors, dtype=dtype).eval().to(device)
    tokenizer = load_tokenizer(folder)
    image_processor = transformers.AutoImageProcessor.from_pretrained(str(folder))
    bias = getattr(model, "logit_bias", None)
    scoring = Scoring(
        logit_scale=float(model.logit_scale.detach().float().exp()),
        logit_bias=float(bias.detach().float().reshape(-1)[0]) if bias is not None else None,
        kind="softmax" if family == "clip" else "sigmoid",
    )
    text = HFTextEncoder(model, tokenizer, family, scoring=scoring)
    vision = HFImageEncoder(model, image_processor, max_pixels=max_pixels, scoring=scoring)
    info = {"family": f"hf-{family}", "name": ref,
            "revision": None if local.is_dir() else (revision or hub.default_revision(ref)),
            "preprocessing": {k: v for k, v in image_processor.to_dict().items() if not k.startswith("_")}}
    return text, vision, info


class HFTextEncoder(ContextTextEncoder):
    def __init__(self, model: torch.nn.Module, tokenizer: Any, family: str, *, scoring: Scoring | None = None):
        self.model = model
        self.scoring = scoring or Scoring()
        self.tokenizer = tokenizer
        self.family = family
        text_cfg = model.config.text_config
        self.max_length = int(text_cfg.max_position_embeddings)
        self.pad_to_max_length = family in ("siglip", "siglip2")
        dim = getattr(model.config, "projection_dim", None) if family == "clip" else text_cfg.hidden_size
        self.dim = int(dim or text_cfg.hidden_size)

    def normalize_text(self, text: str) -> str:
        if self.family == "siglip2":
            return text.lower()  # trained on lower-cased text
        if self.family == "siglip" and not hasattr(self.tokenizer, "canonicalize_text"):
            return canonicalize_siglip(text)  # a tokenizer without SiglipTokenizer's own canonicalisation
        return text

    def token_lengths(self, texts: list[str]) -> list[int]:
        return [len(ids) for ids in self.tokenizer(texts, truncation=False, verbose=False)["input_ids"]]

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        padding = "max_length" if self.pad_to_max_length else "longest"
        enc = self.tokenizer(texts, padding=padding, truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        # what the tokenizer returns is what the processor would pass (SigLIP: input_ids only)
        return {k: enc[k] for k in ("input_ids", "attention_mask") if k in enc}

    def features(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return pooled(self.model.get_text_features(**inputs))


class HFImageEncoder(ImageEncoder):
    """Images decoded by :func:`~multimodal_embed.images.load_image`, then the checkpoint's image processor."""

    def __init__(self, model: torch.nn.Module, image_processor: Any, *, max_pixels: int | None,
                 scoring: Scoring | None = None):
        super().__init__(max_pixels=max_pixels, jpeg_draft=False, scoring=scoring)
        self.model = model
        self.image_processor = image_processor
        cfg = model.config
        dim = getattr(cfg, "projection_dim", None) if cfg.model_type == "clip" else cfg.vision_config.hidden_size
        self.dim = int(dim or cfg.vision_config.hidden_size)

    def preprocess(self, img: Any) -> dict[str, np.ndarray]:
        out = self.image_processor(images=[img], return_tensors="np")
        return {k: np.asarray(v) for k, v in out.items()}

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return pooled(self.model.get_image_features(**batch))
