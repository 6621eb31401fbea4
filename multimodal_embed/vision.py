"""Image encoders: nomic-embed-vision, fed by a parallel decode/preprocess pipeline that loses nothing."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, Future
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .encoders import ImageFailure, Scoring, as_batch
from .errors import ImageDecodeError, InvalidInputError
from .images import DECODE_BUDGET, DEFAULT_MAX_PIXELS, ImageInput, ImagePreprocessor, describe, load_image
from .models.nomic_bert import load_converted
from .models.nomic_vision import NomicVisionConfig, NomicVisionModel, convert_state_dict
from .utils import ModelHolder, check_batch_size, load_safetensors, progress, read_json, worker_pool

logger = logging.getLogger(__name__)


@dataclass
class ImageEmbeddings:
    """What :meth:`Embedder.embed_images_with_errors` returns.

    ``vectors[k]`` is the embedding of ``images[indices[k]]``; ``failures`` lists every other input.
    """

    vectors: np.ndarray
    indices: list[int]
    failures: list[ImageFailure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


# Encoders whose preprocessing is not known to be bounded by its output size refuse images more elongated than
# this (a shortest-edge resize of a 1x10000 image to 224 would make a 224x2240000 image).
MAX_ASPECT_RATIO = 100.0


def _default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 2)))


class ImageEncoder(ModelHolder):
    """Shared image pipeline: decode + preprocess in worker threads, overlapped with batched model calls.

    Subclasses set ``self.model`` and ``self.dim`` and implement :meth:`preprocess` (an RGB PIL image to a
    ``(C, H, W)`` array, or to a dict of arrays with a leading batch axis of 1) and :meth:`forward` (a collated
    batch to unnormalised embeddings).
    """

    model: torch.nn.Module
    dim: int
    scoring: Scoring = Scoring()  # a model with its own logit scale passes it to the constructor
    # ``None``: preprocessing work is bounded by the output size for any aspect ratio (ImagePreprocessor)
    max_aspect_ratio: float | None = MAX_ASPECT_RATIO
    allow_urls: bool = True

    def __init__(self, *, max_pixels: int | None = DEFAULT_MAX_PIXELS, jpeg_draft: bool = False,
                 scoring: Scoring | None = None):
        self.max_pixels = max_pixels
        self.jpeg_draft = jpeg_draft
        if scoring is not None:
            self.scoring = scoring

    # -- hooks -------------------------------------------------------------------------------------------
    def preprocess(self, img: Any) -> np.ndarray | dict[str, np.ndarray]:
        raise NotImplementedError

    def forward(self, batch: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def draft_size(self) -> tuple[int, int] | None:
        return None

    def device_stage(self, batches: Iterator[list[tuple[int, Any]]], images: Sequence[ImageInput],
                     held: ExitStack) -> Iterator[list[tuple[int, Any]]]:
        """A stage between the decode workers and the model (GPU JPEG decode); none by default. Any thread pool it
        needs is entered on ``held`` (the caller's, closed on every exit path), never held by a generator."""
        return batches

    # -- shared ------------------------------------------------------------------------------------------
    def prepare(self, item: ImageInput, index: int) -> np.ndarray | dict[str, np.ndarray]:
        """Decode and preprocess one input (runs in worker threads; PIL releases the GIL). The decoded image is
        held against :data:`~multimodal_embed.images.DECODE_BUDGET` until it is preprocessed, so the workers together
        stay within the budget whatever the images' sizes."""
        draft = self.draft_size() if self.jpeg_draft else None
        label = describe(item, index)
        with ExitStack() as held:
            img = load_image(item, max_pixels=self.max_pixels, name=label, draft=draft, allow_urls=self.allow_urls,
                             reserve=lambda nbytes: held.enter_context(DECODE_BUDGET.hold(nbytes)))
            w, h = img.size
            if self.max_aspect_ratio is not None and max(w, h) > self.max_aspect_ratio * min(w, h):
                raise ImageDecodeError(label, f"aspect ratio {w}x{h} is beyond {self.max_aspect_ratio:g}:1, which "
                                              f"this encoder's preprocessing does not handle in bounded memory")
            try:
                return self.preprocess(img)
            except Exception as exc:  # MemoryError and any preprocessor failure are this item's error
                logger.debug("%s: preprocessing failed", label, exc_info=True)
                raise ImageDecodeError(label, f"preprocessing failed: {type(exc).__name__}: {exc}") from None
            finally:
                del img  # released before the budget is

    def collate(self, items: list[np.ndarray | dict[str, np.ndarray]]) -> torch.Tensor | dict[str, torch.Tensor]:
        device = self.device
        if isinstance(items[0], dict):
            out = {}
            for key in items[0]:
                value = torch.from_numpy(np.concatenate([it[key] for it in items]))
                out[key] = value.to(device, self.dtype if value.is_floating_point() else None)
            return out
        batch = torch.from_numpy(np.stack(items)).to(device)
        return batch.to(self.dtype) if batch.is_floating_point() else batch

    def _prepared(self, images: Sequence[ImageInput], batch_size: int, pool: Executor
                  ) -> Iterator[list[tuple[int, np.ndarray | ImageDecodeError]]]:
        """Yield batches of (index, pixels or error), decoding the next batch in ``pool`` while the caller runs the
        model. The pool is the caller's (:func:`~multimodal_embed.utils.worker_pool`): this generator holds nothing
        that needs closing, so a caller that stops early leaves nothing to the garbage collector."""

        def run(i: int) -> np.ndarray | ImageDecodeError:
            try:
                return self.prepare(images[i], i)
            except ImageDecodeError as exc:
                return exc
            except Exception as exc:  # whatever one item raises stays its own (never loses the others)
                logger.debug("image #%d failed", i, exc_info=True)
                return ImageDecodeError(_safe_describe(images[i], i), f"{type(exc).__name__}: {exc}")

        starts = list(range(0, len(images), batch_size))
        pending: list[list[tuple[int, Future]]] = []
        for k, _ in enumerate(starts):
            while len(pending) < 2 and k + len(pending) < len(starts):
                s = starts[k + len(pending)]
                pending.append([(i, pool.submit(run, i)) for i in range(s, min(s + batch_size, len(images)))])
            batch = pending.pop(0)
            yield [(i, f.result()) for i, f in batch]

    def encode(
        self,
        images: Sequence[ImageInput],
        *,
        batch_size: int = 32,
        num_workers: int | None = None,
        show_progress: bool | None = None,
        on_error: str = "raise",
    ) -> tuple[torch.Tensor, list[int], list[ImageFailure]]:
        """Embed images; returns (unit rows for the good items, their indices, failures)."""
        images = as_batch(images, "images")  # one image or a list: the rule texts follow too
        check_batch_size(batch_size)
        if on_error not in ("raise", "collect"):
            raise InvalidInputError(f"on_error must be 'raise' or 'collect', got {on_error!r}")
        workers = num_workers or _default_workers()
        rows: list[torch.Tensor] = []
        indices: list[int] = []
        failures: list[ImageFailure] = []
        n_batches = (len(images) + batch_size - 1) // batch_size
        # every pool and the bar close here, in this thread, whether the loop ends, raises or the caller is
        # interrupted: pending decodes are cancelled and the workers joined before encode returns or raises
        with ExitStack() as held, torch.inference_mode():
            pool = held.enter_context(worker_pool(workers, "mmembed-decode"))
            batches = self.device_stage(self._prepared(images, batch_size, pool), images, held)
            bar = progress(batches, show_progress, desc="embed images", unit="batch", total=n_batches)
            if hasattr(bar, "close"):
                held.enter_context(closing(bar))
            for batch in bar:
                good = []
                for i, result in batch:
                    if isinstance(result, ImageDecodeError):
                        if on_error == "raise":
                            raise result
                        failures.append(ImageFailure(i, result.item, result.reason))
                    else:
                        good.append((i, result))
                if not good:
                    continue
                rows.append(F.normalize(self.forward(self.collate([p for _, p in good])).float(), dim=-1).cpu())
                indices.extend(i for i, _ in good)
        vectors = torch.cat(rows) if rows else torch.empty(0, self.dim)
        if failures:  # returned as data: the caller reports them (once), so only a debug line here
            logger.debug("%d of %d images could not be embedded (first: %s: %s)", len(failures), len(images),
                         failures[0].item, failures[0].reason)
        return vectors, indices, failures


def _safe_describe(item: Any, index: int) -> str:
    try:
        return describe(item, index)
    except Exception:  # noqa: BLE001 - an item whose repr fails is still reported by position
        return f"#{index} <{type(item).__name__}>"


class PreprocessorImageEncoder(ImageEncoder):
    """A model fed by an :class:`ImagePreprocessor`: workers hand over uint8 crops, and rescale/normalise runs
    batched on the model's device (bit-identical to ``ImagePreprocessor.__call__``; 4x less data to collate and
    copy). Used by nomic-embed-vision and by aligned models. Any aspect ratio is accepted: the preprocessor
    resizes only what survives its center crop."""

    export_recipe = "image"

    max_aspect_ratio = None

    def __init__(self, model: torch.nn.Module, preprocessor: ImagePreprocessor, dim: int, *,
                 max_pixels: int | None, jpeg_draft: bool = True, gpu_decode: bool | None = None):
        super().__init__(max_pixels=max_pixels, jpeg_draft=jpeg_draft)
        self.model = model.eval()
        self.preprocessor = preprocessor
        self.dim = int(dim)
        self.gpu_decode = gpu_decode
        self._jpeg = None

    # -- JPEG decode on the model's device (multimodal_embed/gpu_decode.py) ---------------------------------
    def jpeg_decoder(self):
        """The device JPEG decoder when ``gpu_decode`` is on (``None``: on when the model is on CUDA), else None."""
        from . import gpu_decode

        on = self.gpu_decode
        if on is None:
            on = self.device.type == "cuda" and self.preprocessor.resample == 3 and gpu_decode.torchvision_available()
        if not on:
            return None
        if self._jpeg is None or self._jpeg.device != self.device:
            self._jpeg = gpu_decode.JpegDeviceDecoder(self.preprocessor, self.device, max_pixels=self.max_pixels)
        return self._jpeg

    def prepare(self, item: ImageInput, index: int) -> Any:
        decoder = self.jpeg_decoder()
        if decoder is None:
            return super().prepare(item, index)
        return decoder.route(item, index, super().prepare)

    def device_stage(self, batches, images, held):
        decoder = self.jpeg_decoder()
        return batches if decoder is None else decoder.stage(batches, images, super().prepare, held)

    def collate(self, items: list[Any]) -> torch.Tensor:
        if not any(isinstance(x, torch.Tensor) for x in items):
            return super().collate(items)
        return torch.stack([torch.as_tensor(x).to(self.device) for x in items])

    def draft_size(self) -> tuple[int, int] | None:
        return self.preprocessor.draft_size() if self.preprocessor.do_resize else None

    def preprocess(self, img: Any) -> np.ndarray:
        return self.preprocessor.to_uint8(img)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model(self.preprocessor.normalize(batch).to(self.dtype))


class NomicVisionEncoder(PreprocessorImageEncoder):
    """nomic-embed-vision v1 / v1.5 with its preprocessing."""

    export_recipe = "vit"  # exported like any image tower; the precision policy treats ViTs apart

    def __init__(self, model: NomicVisionModel, preprocessor: ImagePreprocessor, *, max_pixels: int | None,
                 jpeg_draft: bool = True, gpu_decode: bool | None = None):
        super().__init__(model, preprocessor, model.config.hidden_size, max_pixels=max_pixels,
                         jpeg_draft=jpeg_draft, gpu_decode=gpu_decode)

    @classmethod
    def from_folder(
        cls,
        folder: str | Path,
        *,
        name: str | None = None,
        preprocessing: str | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        jpeg_draft: bool = True,
        gpu_decode: bool | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> NomicVisionEncoder:
        """Load a nomic-embed-vision folder; ``preprocessing="shortest_edge"`` selects the training-time resize.

        ``jpeg_draft`` decodes large JPEGs at a reduced DCT scale that keeps 2x the resize target (pixel values
        within 0.14 of the exact path, in normalised units; see benchmarks/RESULTS.md); pass ``False`` for parity.
        ``gpu_decode`` decodes JPEGs on the model's device (``None``: when it is CUDA; see gpu_decode.py).
        """
        folder = Path(folder)
        config = NomicVisionConfig.from_hf_dict(read_json(folder / "config.json"))
        model = NomicVisionModel(config)
        load_converted(model, convert_state_dict(load_safetensors(folder)), what=str(name or folder))
        model.to(device=device, dtype=dtype)
        return cls(model, ImagePreprocessor.from_folder(folder, preprocessing), max_pixels=max_pixels,
                   jpeg_draft=jpeg_draft, gpu_decode=gpu_decode)

def nomic_tower_version(name: str) -> str | None:
    """'v1.5', 'v1' or None, from a model name such as nomic-ai/nomic-embed-vision-v1.5."""
    import re

    lowered = name.lower()
    if re.search(r"v1[._]5", lowered):
        return "v1.5"
    if re.search(r"v1(?![._\d])", lowered):
        return "v1"
    return None


def is_nomic_vision_config(config: dict[str, Any]) -> bool:
    return config.get("model_type") == "nomic_bert" and ("img_size" in config or "patch_size" in config)
