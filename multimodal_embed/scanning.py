"""Scanning a folder for an index: which image files are new, changed, touched (same content) or gone.

Change detection is a pure step over the file system and what the index already knows (path -> size, mtime,
SHA-256); :meth:`ImageIndex.add_folder <multimodal_embed.ImageIndex.add_folder>` applies the result.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from .imagefiles import iter_images

__all__ = ["Changes", "KnownFile", "PendingFile", "file_dims", "scan_changes", "sha256_file"]


class KnownFile(NamedTuple):
    """What the index recorded for a path."""

    id: int
    size: int
    mtime_ns: int
    sha256: str


class PendingFile(NamedTuple):
    """A new or changed file: its stat, content hash and size in pixels (``(None, None)`` if unreadable)."""

    path: str
    stat: os.stat_result
    sha256: str
    dims: tuple[int | None, int | None]


@dataclass
class Changes:
    """The result of :func:`scan_changes`."""

    pending: list[PendingFile] = field(default_factory=list)  # new content: embed, or reuse a vector by hash
    touched: list[tuple[int, os.stat_result]] = field(default_factory=list)  # (file id, new stat): same content
    gone: set[str] = field(default_factory=set)  # known paths no longer present
    unchanged: int = 0  # same size and mtime, or touched


def sha256_file(path: str) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_dims(path: str) -> tuple[int | None, int | None]:
    """(width, height) from the image header, or ``(None, None)``: the embedding step reports the real error."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            return im.size
    except Exception:  # noqa: BLE001 - the embedding step reports the real error
        return None, None


def scan_changes(root: str, known: Mapping[str, KnownFile], *, follow_symlinks: bool = False,
                 on_outside: Callable[[str], None] | None = None) -> Changes:
    """Compare the image files under ``root`` (a real path) with ``known``. Files with the recorded size and
    mtime are unchanged without being read; others are hashed, and count as touched when the hash matches."""
    changes = Changes()
    seen: set[str] = set()
    for path, st in iter_images(root, follow_symlinks=follow_symlinks, contain=not follow_symlinks,
                                on_outside=on_outside):
        seen.add(path)
        row = known.get(path)
        if row is not None and row.size == st.st_size and row.mtime_ns == st.st_mtime_ns:
            changes.unchanged += 1
            continue
        sha = sha256_file(path)
        if row is not None and row.sha256 == sha:  # touched, same content: refresh the stat, keep the result
            changes.touched.append((row.id, st))
            changes.unchanged += 1
            continue
        changes.pending.append(PendingFile(path, st, sha, file_dims(path)))
    changes.gone = {p for p in known if p not in seen}
    return changes
