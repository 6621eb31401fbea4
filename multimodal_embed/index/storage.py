"""The index's vectors on disk: one flat file per stored tier beside the SQLite file, read by memory mapping.

``photos.mmindex-vectors<G>.<tier>`` (``f32``, ``i8``, ``bin``) holds row after row of one tier's codes, for the
layout generation ``G``. SQLite stays the one source of truth: the ``vectors`` table maps a file to its row (with
the row's CRC32), and the ``meta`` table records the layout (``vector_store``: tiers, size, generation, int8 ranges)
and how many rows are committed (``vector_rows``). So:

* appending writes the rows past ``vector_rows`` first (``pwrite``, then ``fsync``) and commits the SQLite rows and
  the new count in the same transaction as the files' metadata; killed before the commit, the bytes past the count
  are ignored and written over by the next run;
* a row whose file is removed or re-embedded is dead (no ``vectors`` row points at it) until a rewrite;
* a rewrite (a store change, an int8 recalibration, compaction) writes generation ``G + 1`` whole, then commits the
  new layout and row numbers in one transaction; the older generation's files are deleted after the commit (files
  of a newer, uncommitted generation are leftovers of a killed rewrite: the next rewrite truncates them).

Opening an index reads only the SQLite metadata: rows are read when a search touches them (the OS pages them in).
"""

from __future__ import annotations

import json
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .quantize import TIER_DTYPE, TIERS, Int8Ranges, row_width

__all__ = ["TIER_SUFFIX", "Layout", "map_rows", "remove_older", "row_crcs", "write_rows"]

TIER_SUFFIX = {"float32": "f32", "int8": "i8", "binary": "bin"}


@dataclass(frozen=True)
class Layout:
    """How an index stores its vectors: the tiers, the stored size (a Matryoshka prefix when below the model's),
    the file generation and the int8 ranges."""

    tiers: tuple[str, ...]
    dim: int
    generation: int = 1
    ranges: Int8Ranges | None = None

    def to_meta(self) -> str:
        return json.dumps({"tiers": list(self.tiers), "dim": self.dim, "generation": self.generation,
                           "int8": None if self.ranges is None else self.ranges.to_json()})

    @classmethod
    def from_meta(cls, value: str, model_dim: int) -> Layout:
        """Parse the ``vector_store`` meta value, or ``ValueError`` naming what is wrong."""
        data = json.loads(value)
        tiers = tuple(data["tiers"])
        dim, generation = data["dim"], data["generation"]
        if not tiers or any(t not in TIERS for t in tiers) or len(set(tiers)) != len(tiers):
            raise ValueError(f"unknown tiers {tiers!r}")
        if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= model_dim:
            raise ValueError(f"stored size {dim!r} is not an int from 1 to the model's {model_dim}")
        if isinstance(generation, bool) or not isinstance(generation, int) or generation < 1:
            raise ValueError(f"generation {generation!r} is not a positive int")
        ranges = Int8Ranges.from_json(data["int8"], dim) if "int8" in tiers else None
        return cls(tiers, dim, generation, ranges)

    def file(self, index_path: Path, tier: str, generation: int | None = None) -> Path:
        gen = self.generation if generation is None else generation
        return index_path.with_name(f"{index_path.name}-vectors{gen}.{TIER_SUFFIX[tier]}")

    def row_bytes(self, tier: str) -> int:
        return row_width(tier, self.dim) * np.dtype(TIER_DTYPE[tier]).itemsize


def map_rows(path: Path, tier: str, dim: int, rows: int) -> np.ndarray:
    """The first ``rows`` rows of a tier file, memory-mapped read-only (nothing is read until it is touched).
    A file shorter than ``rows`` rows raises ``ValueError`` (the caller reports a damaged index)."""
    width, dtype = row_width(tier, dim), np.dtype(TIER_DTYPE[tier])
    if rows == 0:
        return np.empty((0, width), dtype)
    size = os.path.getsize(path)
    if size < rows * width * dtype.itemsize:
        raise ValueError(f"{path.name} holds {size} bytes, fewer than its {rows} committed rows")
    return np.memmap(path, dtype=dtype, mode="r", shape=(rows, width))


def write_rows(path: Path, start: int, codes: np.ndarray, *, truncate: bool = False) -> None:
    """Write ``codes`` at row ``start`` of ``path`` (created with the umask's mode), then ``fsync`` it."""
    data = np.ascontiguousarray(codes)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if truncate else 0)
    fd = os.open(path, flags, 0o666)
    try:
        view, offset = memoryview(data.reshape(-1).view(np.uint8)), start * data[0].nbytes if len(data) else 0
        while view:
            written = os.pwrite(fd, view, offset)
            view, offset = view[written:], offset + written
        os.fsync(fd)
    finally:
        os.close(fd)


def row_crcs(codes: dict[str, np.ndarray], tiers: tuple[str, ...]) -> list[int]:
    """CRC32 of each row's bytes over the tiers in order (what the ``vectors`` table records)."""
    blocks = [np.ascontiguousarray(codes[t]).view(np.uint8).reshape(len(codes[t]), -1) for t in tiers]
    row = np.concatenate(blocks, axis=1) if len(blocks) > 1 else blocks[0]
    return [zlib.crc32(r.tobytes()) for r in row]


def remove_older(index_path: Path, generation: int) -> None:
    """Delete the vector files of generations older than ``generation`` (superseded by a committed rewrite)."""
    pattern = re.compile(re.escape(index_path.name) + r"-vectors(\d+)\.(f32|i8|bin)$")
    try:
        names = os.listdir(index_path.parent)
    except OSError:
        return
    for name in names:
        m = pattern.match(name)
        if m and int(m.group(1)) < generation:
            try:
                os.unlink(index_path.parent / name)
            except OSError:
                pass  # another process removed it, or the folder is read-only: harmless


def vector_files(index_path: Path, layout: Layout) -> dict[str, Path]:
    return {t: layout.file(index_path, t) for t in layout.tiers}


def describe_files(index_path: Path, layout: Layout) -> dict[str, Any]:
    files = vector_files(index_path, layout)
    return {t: os.path.getsize(p) if p.exists() else 0 for t, p in files.items()}
