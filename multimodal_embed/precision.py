"""CPU precision policy: what is fast on *this* CPU, the choice made and why.

``Embedder.from_pretrained(..., precision="fast")`` calls :func:`apply_precision`:

- a CPU with native bf16 (AVX512_BF16 or AMX) runs the towers in bfloat16 (2.8x on images, measured on such a
  machine; see benchmarks/RESULTS.md);
- any other CPU (AVX2, most cloud VMs and laptops) runs them through OpenVINO with int8 per-channel weights
  (NNCF data-free weight compression; LayerNorms, pooling and the output stay floating point; static int8
  activation quantisation was measured slower and less exact on AVX2), because bf16 there is emulated and
  about 6x *slower* than fp32 (measured: 0.9 GFLOP/s bf16 vs 119 GFLOP/s fp32 for a 4096x768x3072 matmul on a
  2-core AVX2 EPYC);
- accelerators keep their own default dtype (bf16/fp16 on CUDA).

``precision=None`` (or ``"exact"``) changes nothing: fp32 on CPU stays the exact path. The quantised towers are
exported once per model into a cache folder (``MMEMBED_CACHE`` or ``~/.cache/multimodal_embed``), atomically.
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

PRECISIONS = ("exact", "fast")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# measured on a 2-core AVX2 AMD EPYC (torch 2.14.1, 2 threads): emulated bf16 vs fp32
BF16_SLOWDOWN_REASON = ("this CPU has no native bf16 (no AVX512_BF16/AMX): torch emulates bfloat16 matmuls, "
                        "measured 0.9 GFLOP/s vs 119 GFLOP/s in fp32 on a 2-core AVX2 machine (nomic vision 6x "
                        "slower); use dtype=None (exact fp32) or precision='fast' (int8 on this CPU)")


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


@dataclass(frozen=True)
class PrecisionChoice:
    """The policy's answer: run the towers in ``mode`` (``"fp32"``, ``"bf16"``, ``"int8"`` or ``"device"``)
    on ``engine`` (``"torch"`` or ``"openvino"``), and why."""

    mode: str
    engine: str
    reason: str

    def as_info(self) -> dict[str, str]:
        return {"mode": self.mode, "engine": self.engine, "reason": self.reason}


def choose_precision(precision: str | None, device_type: str = "cpu",
                     capability: CpuCapability | None = None) -> PrecisionChoice:
    """The policy. ``None``/``"exact"``: fp32 on CPU (exact). ``"fast"`` on CPU: bf16 with native bf16,
    else int8 through OpenVINO. On accelerators the device's own dtype is kept."""
    if precision is not None and precision not in PRECISIONS:
        raise InvalidInputError(f"unknown precision {precision!r}; use one of {list(PRECISIONS)} or None")
    if device_type != "cpu":
        return PrecisionChoice("device", "torch", f"{device_type}: the device's default dtype (bf16/fp16 on CUDA)")
    if precision in (None, "exact"):
        return PrecisionChoice("fp32", "torch", "exact: fp32 is the default on CPU")
    cap = capability or cpu_capability()
    if cap.native_bf16:
        return PrecisionChoice("bf16", "torch", f"fast: {cap.describe()}: native bf16 matmuls (AVX512_BF16/AMX)")
    return PrecisionChoice("int8", "openvino",
                           f"fast: {cap.describe()}: bf16 would be emulated (about 6x slower than fp32), so OpenVINO "
                           f"with int8 per-channel weights (NNCF, data-free; embeddings, norms and pooling stay "
                           f"floating point)")


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
    """Which OpenVINO export recipe fits a tower: ``"nomic"``, ``"bert"``, ``"image"``, or ``None``."""
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
    if choice.mode in ("int8", "bf16") and embedder.info.get("dtype") not in (None, "float32"):
        raise InvalidInputError(f"precision={precision!r} picks the dtype itself; do not also pass "
                                f"dtype={embedder.info.get('dtype')!r}")
    if choice.mode == "bf16":
        for key, encoder in _towers(embedder):
            encoder.model.to(torch.bfloat16)
            towers[key] = "bf16 (torch)"
        embedder.info["dtype"] = "bfloat16"
    elif choice.mode == "int8":
        from .engines.openvino import compile_tower

        for key, encoder in _towers(embedder):
            kind = _tower_kind(encoder)
            if kind is None:
                towers[key] = f"fp32 (torch): {type(encoder).__name__} has no int8 export recipe"
                continue
            size = encoder.preprocessor.output_size() if kind == "image" else None
            encoder.model = compile_tower(encoder.model, kind, image_size=size, cache_dir=cache_dir)
            towers[key] = f"int8 weights (OpenVINO, {encoder.model.path.name})"
    else:
        towers = {key: choice.mode for key, _ in _towers(embedder)}
    embedder.info["precision"] = {"requested": precision or "exact", **choice.as_info(), "towers": towers}
    logger.info("precision %s: %s", choice.mode, choice.reason)
    return embedder

