"""CPU precision policy: what is fast on *this* CPU, the choice made and why.

``Embedder.from_pretrained(..., precision=...)`` calls :func:`apply_precision`:

- ``None``/``"exact"``: nothing changes; fp32 on CPU is the exact path.
- ``"fast"``: the fastest engine measured to stay within the quality limits on this kind of CPU:
  - native bf16 (AVX512_BF16 or AMX): the towers run in bfloat16 (2.8x on images, measured on such a machine);
  - any other CPU (AVX2, most cloud VMs and laptops): towers with a measured gain run as an OpenVINO fp32 graph
    (fused kernels; same numbers within 1e-6): BERT-family text towers (MiniLM 1.19x) and image towers
    (EfficientNet-Lite0 2-3x, nomic ViT 1.2x); the nomic text tower stays on torch, whose packed (unpadded)
    fp32 path nothing beat there. int8 is *not* picked: without VNNI, int8 weights and int8 activations were
    measured no faster than fp32 (0.83-1.03x) and bf16 is emulated, about 6x *slower* than fp32;
- accelerators keep their own default dtype (bf16/fp16 on CUDA).
- ``"int8"``: OpenVINO with int8 per-channel weights (NNCF, data-free): 4x smaller matmul weights, for memory;
  not faster than fp32 on AVX2 (see benchmarks/RESULTS.md, "CPU precision").

Exported graphs are written once per model into a cache folder (``MMEMBED_CACHE`` or
``~/.cache/multimodal_embed``), atomically.
"""

from __future__ import annotations

import functools
import logging
import platform
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InvalidInputError

logger = logging.getLogger(__name__)

PRECISIONS = ("exact", "fast", "int8")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# measured on a 2-core AVX2 AMD EPYC (torch 2.14.1, 2 threads): emulated bf16 vs fp32
BF16_SLOWDOWN_REASON = ("this CPU has no native bf16 (no AVX512_BF16/AMX): torch emulates bfloat16 matmuls, "
                        "measured 0.9 GFLOP/s vs 119 GFLOP/s in fp32 on a 2-core AVX2 machine (nomic vision 6x "
                        "slower); use dtype=None (exact fp32) or precision='fast'")


@dataclass(frozen=True)
class CpuCapability:
    """What the CPU can do: torch's kernel level (``"AVX2"``, ``"AVX512"``, ...), native bf16, and its name."""

    isa: str
    native_bf16: bool
    model: str
    flags: frozenset[str] = frozenset()

    def describe(self) -> str:
        return f"{self.model} ({self.isa}, {'native' if self.native_bf16 else 'no native'} bf16)"


def _cpu_flags_and_model() -> tuple[frozenset[str], str]:
    flags: set[str] = set()
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("flags", "Features") and not flags:
                    flags = set(value.split())
                elif key == "model name" and value.strip():
                    model = value.strip()
    except OSError:
        pass
    return frozenset(flags), model


@functools.lru_cache(maxsize=1)
def cpu_capability() -> CpuCapability:
    """Probe this CPU once (``torch.backends.cpu.get_cpu_capability()`` and the cpuinfo flags)."""
    import torch

    flags, model = _cpu_flags_and_model()
    isa = str(torch.backends.cpu.get_cpu_capability())
    return CpuCapability(isa=isa, native_bf16=any(f in flags for f in NATIVE_BF16_FLAGS), model=model, flags=flags)


# precision="fast" on a CPU without native bf16: which export recipes run as an OpenVINO fp32 graph, and why.
# Measured on a 2-core AVX2 AMD EPYC, 1 thread, interleaved in one process (benchmarks/cpu_precision.py).
FAST_GRAPH = {
    "bert": (True, "measured MiniLM-L6 1.12-1.19x torch fp32 (int8 weights 1.00x)"),
    "image": (True, "measured EfficientNet-Lite0 2.4x torch fp32 (channels-last); int8 weights 2.7x"),
    "vit": (False, "fp32 (torch): measured OpenVINO fp32 0.84-1.21x, int8 weights 0.77-1.03x (nomic ViT-B)"),
    "nomic": (False, ("fp32 (torch, packed): measured OpenVINO fp32 0.98-1.01x, int8 weights 0.83-0.92x, "
                     "int8 weights+activations 0.88-0.94x")),
}


@dataclass(frozen=True)
class PrecisionChoice:
    """The policy's answer: run the towers in ``mode`` (``"fp32"``, ``"bf16"``, ``"int8"`` or ``"device"``)
    on ``engine`` (``"torch"`` or ``"openvino"``: towers with an export recipe that pays), and why."""

    mode: str
    engine: str
    reason: str

    def as_info(self) -> dict[str, str]:
        return {"mode": self.mode, "engine": self.engine, "reason": self.reason}


def choose_precision(precision: str | None, device_type: str = "cpu",
                     capability: CpuCapability | None = None) -> PrecisionChoice:
    """The policy. ``None``/``"exact"``: fp32 on CPU (exact). ``"fast"`` on CPU: bf16 with native bf16, else
    fp32 through OpenVINO where it measured faster. ``"int8"``: int8 weights through OpenVINO. On accelerators
    the device's own dtype is kept."""
    if precision is not None and precision not in PRECISIONS:
        raise InvalidInputError(f"unknown precision {precision!r}; use one of {list(PRECISIONS)} or None")
    if device_type != "cpu":
        return PrecisionChoice("device", "torch", f"{device_type}: the device's default dtype (bf16/fp16 on CUDA)")
    if precision in (None, "exact"):
        return PrecisionChoice("fp32", "torch", "exact: fp32 is the default on CPU")
    cap = capability or cpu_capability()
    if precision == "int8":
        return PrecisionChoice("int8", "openvino", f"int8: {cap.describe()}: OpenVINO with int8 per-channel weights "
                                                   f"(NNCF, data-free; 4x smaller matmul weights)")
    if cap.native_bf16:
        return PrecisionChoice("bf16", "torch", f"fast: {cap.describe()}: native bf16 matmuls (AVX512_BF16/AMX)")
    return PrecisionChoice("fp32", "openvino",
                           f"fast: {cap.describe()}: bf16 would be emulated (about 6x slower than fp32) and int8 "
                           f"measured no faster than fp32 without VNNI, so fp32 through OpenVINO's fused kernels "
                           f"where that measured faster than torch")


_WARNED_BF16 = False


def warn_if_slow_dtype(dtype: Any, device_type: str, capability: CpuCapability | None = None) -> bool:
    """Warn once when bfloat16 is asked for on a CPU that only emulates it. Returns whether it warned."""
    global _WARNED_BF16
    import torch

    if device_type != "cpu" or dtype is not torch.bfloat16 or _WARNED_BF16:
        return False
    cap = capability or cpu_capability()
    if cap.native_bf16:
        return False
    _WARNED_BF16 = True
    warnings.warn(f"dtype=bfloat16 on {cap.model}: {BF16_SLOWDOWN_REASON}", RuntimeWarning, stacklevel=4)
    return True


def _tower_kind(encoder: Any) -> str | None:
    """Which OpenVINO export recipe fits a tower: ``"nomic"``, ``"bert"``, ``"image"``, ``"vit"``, or ``None``."""
    return getattr(encoder, "export_recipe", None)  # a ModelHolder attribute; other objects have none


def _towers(embedder: Any) -> Iterator[tuple[str, Any]]:
    for key, encoder in (("text", embedder.text_encoder), ("vision", embedder.vision_encoder)):
        if encoder is not None:
            yield key, encoder


def apply_precision(embedder: Any, precision: str | None, *, cache_dir: str | Path | None = None,
                    capability: CpuCapability | None = None) -> Any:
    """Run ``embedder``'s towers at the precision the policy picks for this CPU; records the choice and the reason
    in ``embedder.info["precision"]`` and returns the embedder. ``None``/``"exact"`` changes nothing."""
    import torch

    device = torch.device(embedder.info.get("device", "cpu"))
    choice = choose_precision(precision, device.type, capability)
    towers: dict[str, str] = {}
    changes_dtype = choice.mode in ("int8", "bf16") or choice.engine == "openvino"
    if changes_dtype and embedder.info.get("dtype") not in (None, "float32"):
        raise InvalidInputError(f"precision={precision!r} picks the dtype itself; do not also pass "
                                f"dtype={embedder.info.get('dtype')!r}")
    if choice.mode == "bf16":
        for key, encoder in _towers(embedder):
            encoder.model.to(torch.bfloat16)
            towers[key] = "bf16 (torch)"
        embedder.info["dtype"] = "bfloat16"
    elif choice.engine == "openvino":
        from .engines.openvino import compile_tower

        for key, encoder in _towers(embedder):
            kind = _tower_kind(encoder)
            if kind is None:
                towers[key] = f"fp32 (torch): {type(encoder).__name__} has no OpenVINO export recipe"
                continue
            graph, why = FAST_GRAPH.get(kind, (False, "fp32 (torch): not measured"))
            if choice.mode == "fp32" and not graph:
                towers[key] = why
                continue
            size = encoder.preprocessor.output_size() if kind in ("image", "vit") else None
            encoder.model = compile_tower(encoder.model, kind, weights=choice.mode, image_size=size,
                                          cache_dir=cache_dir)
            name = encoder.model.path.name
            towers[key] = (f"int8 weights (OpenVINO, {name})" if choice.mode == "int8"
                           else f"fp32 graph (OpenVINO, {name}): {why}")
    else:
        towers = {key: choice.mode for key, _ in _towers(embedder)}
    embedder.info["precision"] = {"requested": precision or "exact", **choice.as_info(), "towers": towers}
    logger.info("precision %s: %s", choice.mode, choice.reason)
    return embedder

