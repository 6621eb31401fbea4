"""OpenVINO engine for the CPU precisions: export a tower once per model into a cache folder, atomically.

A tower (text transformer or image model) is converted from its torch module (``openvino.convert_model``,
dynamic batch and sequence axes) and saved as OpenVINO IR under ``<cache>/openvino/<key>/``: as an fp32 graph
(``weights="fp32"``, the fast mode on CPUs without native bf16: OpenVINO's fused kernels, same numbers within
1e-6), or with its MatMul/Gather weights compressed to int8 by NNCF's data-free per-channel weight compression
(``weights="int8"``; no calibration data; LayerNorms, convolutions and pooling stay fp32). ``key`` hashes the weights, the tower kind and the library
versions, so a changed model is exported again and an unchanged one is read back. The encoder keeps its
tokenizer, preprocessing and pooling; only ``encoder.model`` is swapped for an :class:`OpenVINOTower` that calls
the compiled model (the original fp32 module stays attached, for device/dtype queries).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from ..errors import MissingDependencyError

logger = logging.getLogger(__name__)

RECIPES = {"int8": "int8w-asym-matmul-v2", "fp32": "fp32-graph-v1"}  # bump when an export recipe changes


def _require() -> tuple[Any, Any]:
    try:
        import nncf
        import openvino as ov
    except ImportError as exc:
        raise MissingDependencyError(
            f"precision='fast'/'int8' on a CPU without native bf16 needs OpenVINO and NNCF ({exc.name} is missing): "
            f"pip install 'multimodal-embed[fast]'") from exc
    return ov, nncf


def cache_root() -> Path:
    """The package's cache folder (:func:`multimodal_embed.defaults.cache_home`)."""
    from ..defaults import cache_home

    return cache_home()


def weights_key(module: nn.Module, kind: str, weights: str = "int8") -> str:
    """A hash of every parameter and buffer (names, shapes, bytes), the tower kind, the recipe and the library
    versions."""
    import nncf
    import openvino as ov

    h = hashlib.sha256(f"{RECIPES[weights]}|{kind}|{ov.__version__}|{nncf.__version__}|{torch.__version__}".encode())
    for name, t in list(module.state_dict().items()):
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:24]


# -- what gets traced: plain tensor-in, tensor-out modules ----------------------------------------------------
class _BertTrace(nn.Module):
    """A transformers BERT-family model: (ids, mask, token types) -> last hidden state."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.model(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state


class _NomicTrace(nn.Module):
    """NomicBertModel with the rotary tables and the key mask as inputs (they depend on the padded length and
    on dynamic NTK scaling, which a trace would freeze; computing them outside keeps the graph length-free)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, cos, sin):
        emb = self.model.embeddings
        x = emb.word_embeddings(input_ids) + emb.token_type_embeddings(torch.zeros_like(input_ids))
        x = self.model.emb_ln(x)
        mask = attention_mask.bool()[:, None, None, :]
        for layer in self.model.encoder.layers:
            x = layer(x, cos, sin, mask)
        return x


class _ImageTrace(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model(pixel_values)


class OpenVINOTower(nn.Module):
    """Stands in for a tower's torch module: same call convention, runs the compiled OpenVINO model."""

    def __init__(self, original: nn.Module, compiled: Any, kind: str, path: Path):
        super().__init__()
        self.original = original  # parameters: device/dtype queries; config: the encoders read it
        self.compiled = compiled
        self.kind = kind
        self.path = path
        self.config = getattr(original, "config", None)
        self._request = compiled.create_infer_request()
        self._lock = threading.Lock()  # one infer request: callers in several threads take turns

    def _run(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        with self._lock:
            out = self._request.infer([t.detach().cpu().numpy() for t in inputs], share_inputs=True)
            return torch.from_numpy(out[0].copy())  # the request reuses its output buffer

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.kind == "bert":
            ids = kwargs.get("input_ids", args[0] if args else None)
            mask = kwargs.get("attention_mask")
            types = kwargs.get("token_type_ids")
            mask = torch.ones_like(ids) if mask is None else mask
            types = torch.zeros_like(ids) if types is None else types
            return SimpleNamespace(last_hidden_state=self._run([ids, mask, types]))
        if self.kind == "nomic":
            from ..models.nomic_bert import _rotary_cos_sin

            ids = args[0] if args else kwargs["input_ids"]
            mask = args[1] if len(args) > 1 else kwargs.get("attention_mask")
            mask = torch.ones_like(ids) if mask is None else mask
            cos, sin = _rotary_cos_sin(self.original.config, ids.shape[1], torch.device("cpu"), torch.float32)
            return self._run([ids, mask, cos, sin])
        return self._run([args[0] if args else kwargs["pixel_values"]])


def _examples(kind: str, original: nn.Module, image_size: tuple[int, int] | None) -> tuple[tuple[torch.Tensor, ...], nn.Module]:
    if kind == "bert":
        ids = torch.ones(2, 16, dtype=torch.long)
        return (ids, torch.ones_like(ids), torch.zeros_like(ids)), _BertTrace(original)
    if kind == "nomic":
        from ..models.nomic_bert import _rotary_cos_sin

        ids = torch.ones(2, 16, dtype=torch.long)
        cos, sin = _rotary_cos_sin(original.config, 16, torch.device("cpu"), torch.float32)
        return (ids, torch.ones_like(ids), cos, sin), _NomicTrace(original)
    h, w = image_size or (224, 224)
    return (torch.zeros(2, 3, h, w),), _ImageTrace(original)


def _dynamic_shapes(kind: str, example: tuple[torch.Tensor, ...]) -> list[list[int]]:
    """-1 on the batch axis (and on the sequence axis for text), fixed elsewhere."""
    shapes = []
    for i, t in enumerate(example):
        dims = list(t.shape)
        if kind in ("bert", "nomic"):
            if kind == "nomic" and i >= 2:  # cos / sin: (L, head_dim)
                dims[0] = -1
            else:
                dims[0] = dims[1] = -1
        else:
            dims[0] = -1
        shapes.append(dims)
    return shapes


def convert_tower(original: nn.Module, kind: str, *, image_size: tuple[int, int] | None = None) -> Any:
    """``original`` traced and converted to an fp32 OpenVINO model with dynamic batch (and sequence) axes."""
    ov, _ = _require()
    example, traced = _examples(kind, original.float().eval(), image_size)
    with torch.inference_mode(False), torch.no_grad():
        return ov.convert_model(traced.eval(), example_input=example,
                                input=[ov.PartialShape(s) for s in _dynamic_shapes(kind, example)])


def compile_ir(xml: Path, threads: int | None = None) -> Any:
    """Compile a saved IR for this CPU: latency hint, ``threads`` (default torch's), fp32 inference precision
    (OpenVINO would otherwise run bf16 on CPUs with native bf16, AMX/AVX512_BF16)."""
    ov, _ = _require()
    config = {"INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads()),
              "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    return ov.Core().compile_model(str(xml), "CPU", config)


def export_tower(original: nn.Module, kind: str, *, weights: str = "int8",
                 image_size: tuple[int, int] | None = None, cache_dir: str | Path | None = None) -> Path:
    """The IR (``model.xml``) of ``original`` with ``weights`` ``"int8"`` or ``"fp32"``, exported once into the
    cache (atomically)."""
    if weights not in RECIPES:
        raise ValueError(f"weights must be one of {list(RECIPES)}, got {weights!r}")
    ov, nncf = _require()
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    suffix = "" if weights == "int8" else f"-{weights}"
    final = root / "openvino" / f"{kind}{suffix}-{weights_key(original, kind, weights)}"
    xml = final / "model.xml"
    if xml.is_file() and (final / "model.bin").is_file():
        return xml
    root.joinpath("openvino").mkdir(parents=True, exist_ok=True)
    logger.info("exporting the %s tower to OpenVINO %s (once per model) into %s", kind, weights, final)
    model = convert_tower(original, kind, image_size=image_size)
    # Convolutions stay fp32: int8 per-channel weights on EfficientNet's depthwise/pointwise convs cost quality
    # (min cosine 0.93 on CIFAR-10) while OpenVINO's fp32 conv kernels already bring the speed.
    if weights == "int8":
        ignored = nncf.IgnoredScope(types=["Convolution", "GroupConvolution"], validate=False)
        model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM, ignored_scope=ignored)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root / "openvino"))
    try:
        ov.save_model(model, str(tmp / "model.xml"), compress_to_fp16=False)
        try:
            os.replace(tmp, final)
        except OSError:  # another process finished first: keep its copy
            if not xml.is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return xml


def compile_tower(original: nn.Module, kind: str, *, weights: str = "int8", image_size: tuple[int, int] | None = None,
                  cache_dir: str | Path | None = None, threads: int | None = None) -> OpenVINOTower:
    """Export (or read back) and compile ``original`` for this CPU; returns the stand-in module."""
    xml = export_tower(original, kind, weights=weights, image_size=image_size, cache_dir=cache_dir)
    return OpenVINOTower(original, compile_ir(xml, threads), kind, xml.parent)
