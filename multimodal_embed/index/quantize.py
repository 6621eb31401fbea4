"""Compact vector codes for the index: int8 (per-dimension scalar quantization) and binary (packed sign bits).

The recipe of sentence-transformers' ``quantize_embeddings``, Qdrant and usearch, written out here so the index can
store, search and rescore its own codes:

* ``int8``: each dimension ``i`` maps ``[lo_i, hi_i]`` onto the 256 levels ``-128..127``
  (``q = round((x - lo) / step) - 128``, ``step = (hi - lo) / 255``); values outside are clipped. The ranges are
  calibrated on the index's own vectors (per-dimension min and max, widened by :data:`INT8_MARGIN` of the range on
  each side) once it holds :data:`CALIBRATION_MIN` vectors, and again each time it has grown
  :data:`RECALIBRATE_GROWTH`-fold; before that, the stated fixed range ``[-1, 1]`` (every component of a unit vector
  lies in it). A code is read back as ``lo + (q + 128) * step``: scores are float32 dot products of the float32
  query with these values (asymmetric: the query is not quantized).
* ``binary``: one bit per dimension, set where the value is > 0, packed 8 to a byte (``numpy.packbits``, big bit
  order). Read back as ``+-1/sqrt(d)`` (a unit vector), so the dot product of two codes is ``1 - 2 * hamming / d``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidInputError

__all__ = ["CALIBRATION_MIN", "INT8_MARGIN", "RECALIBRATE_GROWTH", "STORES", "TIERS", "Int8Ranges", "hamming",
           "pack_bits", "parse_store", "richest", "unpack_bits"]

TIERS = ("float32", "int8", "binary")  # richest first
STORES = ("float32", "int8", "binary", "binary+int8", "binary+float32")
TIER_DTYPE = {"float32": np.float32, "int8": np.int8, "binary": np.uint8}
CALIBRATION_MIN = 1000  # vectors needed before int8 ranges are calibrated on the index's own vectors
RECALIBRATE_GROWTH = 4  # recalibrate each time the index has grown this many times since the last calibration
INT8_MARGIN = 0.05  # calibrated ranges are widened by this fraction of the range on each side
FIXED_RANGE = (-1.0, 1.0)  # the int8 range before calibration: every component of a unit vector lies in it


def parse_store(store: Any) -> tuple[str, ...]:
    """The tiers a ``store`` setting names (``"binary+int8"`` -> ``("binary", "int8")``), or
    :class:`InvalidInputError` listing the accepted values."""
    if isinstance(store, str) and store.strip().lower() in STORES:
        return tuple(store.strip().lower().split("+"))
    raise InvalidInputError(f"store must be one of {', '.join(STORES)}; got {store!r}")


def store_name(tiers: tuple[str, ...]) -> str:
    return "+".join(tiers)


def richest(tiers: tuple[str, ...]) -> str:
    """The most precise tier of a store (what its vectors are read back from)."""
    return min(tiers, key=TIERS.index)


def row_width(tier: str, dim: int) -> int:
    """Elements per row of a tier's file (bytes for int8 and binary)."""
    return (dim + 7) // 8 if tier == "binary" else dim


# -- binary --------------------------------------------------------------------------------------------------
def pack_bits(vectors: np.ndarray) -> np.ndarray:
    """``(n, d)`` floats -> ``(n, ceil(d / 8))`` uint8 sign bits (bit set where the value is > 0)."""
    return np.packbits(np.asarray(vectors) > 0, axis=1)


def unpack_bits(codes: np.ndarray, dim: int) -> np.ndarray:
    """Packed sign bits -> ``(n, dim)`` float32 unit vectors of ``+-1/sqrt(dim)``."""
    bits = np.unpackbits(np.asarray(codes, dtype=np.uint8), axis=1, count=dim)
    return ((bits.astype(np.float32) * 2 - 1) / np.float32(np.sqrt(dim))).astype(np.float32)


def hamming(codes: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Hamming distances (int32) of each packed row of ``codes`` to one packed ``query`` row (numpy's
    ``bitwise_count`` on 64-bit words where the row length allows, else on bytes)."""
    codes = np.ascontiguousarray(codes)
    query = np.ascontiguousarray(query, dtype=np.uint8).reshape(1, -1)
    width = codes.shape[1]
    if width % 8 == 0 and codes.shape[0]:
        codes, query = codes.view(np.uint64), query.view(np.uint64)
    return np.bitwise_count(np.bitwise_xor(codes, query)).sum(axis=1, dtype=np.int32)


# -- int8 ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Int8Ranges:
    """Per-dimension ``[lo, hi]`` of an int8 tier, and how many vectors they were calibrated on (0: the fixed
    range)."""

    lo: np.ndarray
    hi: np.ndarray
    calibrated_on: int = 0

    @classmethod
    def fixed(cls, dim: int) -> Int8Ranges:
        return cls(np.full(dim, FIXED_RANGE[0], np.float32), np.full(dim, FIXED_RANGE[1], np.float32), 0)

    @classmethod
    def calibrate(cls, blocks: Iterable[np.ndarray]) -> Int8Ranges:
        """Per-dimension min and max over ``blocks`` of rows (read one at a time), widened by
        :data:`INT8_MARGIN` of the range on each side."""
        lo = hi = None
        count = 0
        for block in blocks:
            block = np.asarray(block, dtype=np.float32)
            if not len(block):
                continue
            count += len(block)
            b_lo, b_hi = block.min(axis=0), block.max(axis=0)
            lo, hi = (b_lo, b_hi) if lo is None else (np.minimum(lo, b_lo), np.maximum(hi, b_hi))
        if lo is None or hi is None:
            raise ValueError("no vectors to calibrate on")
        span = np.maximum(hi - lo, 1e-6)
        return cls((lo - INT8_MARGIN * span).astype(np.float32), (hi + INT8_MARGIN * span).astype(np.float32),
                   count)

    @property
    def step(self) -> np.ndarray:
        return ((self.hi - self.lo) / np.float32(255)).astype(np.float32)

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        q = np.rint((np.asarray(vectors, np.float32) - self.lo) / self.step) - 128
        return np.clip(q, -128, 127).astype(np.int8)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return (self.lo + (np.asarray(codes).astype(np.float32) + 128) * self.step).astype(np.float32)

    def to_json(self) -> dict[str, Any]:
        return {"lo": self.lo.tolist(), "hi": self.hi.tolist(), "calibrated_on": self.calibrated_on}

    @classmethod
    def from_json(cls, value: dict[str, Any], dim: int) -> Int8Ranges:
        lo, hi = np.asarray(value["lo"], np.float32), np.asarray(value["hi"], np.float32)
        if lo.shape != (dim,) or hi.shape != (dim,) or not (np.isfinite(lo).all() and (hi > lo).all()):
            raise ValueError(f"int8 ranges are not {dim} finite increasing pairs")
        return cls(lo, hi, int(value.get("calibrated_on", 0)))

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Int8Ranges) and np.array_equal(self.lo, other.lo)
                and np.array_equal(self.hi, other.hi) and self.calibrated_on == other.calibrated_on)

    __hash__ = None  # type: ignore[assignment]


def encode(tiers: tuple[str, ...], vectors: np.ndarray, ranges: Int8Ranges | None) -> dict[str, np.ndarray]:
    """The codes of ``vectors`` (already at the store's size) for each tier."""
    out: dict[str, np.ndarray] = {}
    for tier in tiers:
        if tier == "float32":
            out[tier] = np.ascontiguousarray(vectors, dtype=np.float32)
        elif tier == "int8":
            assert ranges is not None
            out[tier] = ranges.encode(vectors)
        else:
            out[tier] = pack_bits(vectors)
    return out


def decode(tier: str, codes: np.ndarray, dim: int, ranges: Int8Ranges | None) -> np.ndarray:
    """Float32 rows read back from a tier's codes (see the module docstring)."""
    if tier == "float32":
        return np.asarray(codes, dtype=np.float32)
    if tier == "int8":
        assert ranges is not None
        return ranges.decode(codes)
    return unpack_bits(codes, dim)


def describe(tiers: tuple[str, ...], dim: int) -> dict[str, Any]:
    """Bytes per vector of each tier and in all (``mmembed info``)."""
    per = {t: row_width(t, dim) * np.dtype(TIER_DTYPE[t]).itemsize for t in tiers}
    return {"tiers": list(tiers), "dim": dim, "bytes_per_vector": per, "bytes_per_vector_total": sum(per.values())}


def dumps_ranges(ranges: Int8Ranges | None) -> str:
    return json.dumps(None if ranges is None else ranges.to_json())
