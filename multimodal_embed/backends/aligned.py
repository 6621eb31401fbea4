"""Models made by :mod:`multimodal_embed.align`: a frozen text model plus a timm trunk and a projection."""

from __future__ import annotations

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
    def __init__(self, model: torch.nn.Module, preprocessor: ImagePreprocessor, *, max_pixels: int | None,
                 scoring: Scoring | None = None):
        super().__init__(model, preprocessor, model.proj.out_features, max_pixels=max_pixels)
        self.scoring = scoring or Scoring()


def _to_channels_last(_module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return (args[0].contiguous(memory_format=torch.channels_last), *args[1:])


def use_channels_last(trunk: torch.nn.Module) -> None:
    """Run a convolutional trunk in channels-last layout (weights and inputs): on CPU oneDNN's NHWC kernels run
    timm's EfficientNet-Lite0 1.4-2x faster than NCHW (depthwise convolutions), same numbers within fp32
    rounding (relative difference ~6e-7; tests/backends/test_aligned_backend.py)."""
    trunk.to(memory_format=torch.channels_last)
    trunk.register_forward_pre_hook(_to_channels_last)


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
    from ..loading import load_text_encoder
    from ..models.aligned import read_aligned_folder, resolve_packaged

    ref = str(ref)
    folder = BUILTIN_DIR / ref.removeprefix("builtin:") if ref.startswith("builtin:") else Path(ref).expanduser()
    files = read_aligned_folder(folder)
    cfg = files.config
    text_ref = cfg["text"]
    text = load_text_encoder(resolve_packaged(text_ref), revision=revision, cache_dir=cache_dir, device=device,
                             dtype=dtype)
    if text.dim != cfg["dim"]:
        raise ConfigError(f"{folder}: the text model {text_ref} has dimension {text.dim}, the projection {cfg['dim']}")
    model = files.build_model(folder)
    model.to(device=device, dtype=dtype)
    if device.type == "cpu":
        use_channels_last(model.trunk)
    scoring = Scoring(logit_scale=float(cfg.get("logit_scale") or model.logit_scale.detach().exp()), kind="softmax")
    image = AlignedImageEncoder(model, ImagePreprocessor.from_dict(files.preprocessor), max_pixels=max_pixels,
                                scoring=scoring)
    text.scoring = scoring  # the frozen text model is shared as it is; the pair's scoring is the projection's
    info = {"family": "aligned", "name": ref, "revision": None, "text_name": text_ref,
            "preprocessing": files.preprocessor}
    return text, image, info
