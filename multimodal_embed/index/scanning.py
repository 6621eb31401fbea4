"""Scanning a folder for an index: which image files are new, changed, touched (same content) or gone.

Change detection is a pure step over the file system and what the index already knows (path -> size, mtime,
SHA-256); :meth:`ImageIndex.add_folder <multimodal_embed.ImageIndex.add_folder>` applies the result.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from ..imagefiles import NOT_REGULAR, iter_images, sha256_file  # sha256_file: re-exported (one reader)

__all__ = ["Changes", "KnownFile", "PendingFile", "file_dims", "scan_changes", "sha256_file"]


class KnownFile(NamedTuple):
    """What the index recorded for a path."""

    id: int
    size: int
    mtime_ns: int
    sha256: str
    error: str | None = None  # why the file failed, when it is recorded as bad
    retry: bool = False  # a recorded failure to try again even if the file is unchanged


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
    unreadable: list[tuple[str, os.stat_result, str]] = field(default_factory=list)  # (path, stat, reason): record
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): special files, not read
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): bad names, vanished, not stat-able
    known_failed: list[tuple[str, str]] = field(default_factory=list)  # (path, recorded reason): unchanged bad files


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
    mtime are unchanged without being read; others are hashed, and count as touched when the hash matches.
    A file recorded as bad that is unchanged (or touched) goes to ``known_failed`` with its recorded reason, not
    to ``unchanged``, unless its record says to retry it (then it is pending like a new file).

    One bad file never stops the scan: special files go to ``skipped``, files that cannot be read (permissions)
    to ``unreadable`` (recorded as failed, retried on the next run), files deleted between the listing and the
    hash to ``failed``. Names that are not UTF-8 are scanned like any other (as ``os`` gives them)."""
    changes = Changes()
    seen: set[str] = set()
    for path, st in iter_images(root, follow_symlinks=follow_symlinks, contain=not follow_symlinks,
                                on_outside=on_outside, on_skip=lambda p, r: (changes.skipped if r == NOT_REGULAR else changes.failed).append((p, r))):
        seen.add(path)
        row = known.get(path)
        if row is not None and row.retry:
            row = None  # hashed and embedded again, like a new file
        if (row is not None and row.sha256 and row.size == st.st_size and row.mtime_ns == st.st_mtime_ns):
            _same(changes, path, row)
            continue
        try:
            sha = sha256_file(path)
        except FileNotFoundError:
            seen.discard(path)
            changes.failed.append((path, "deleted while indexing"))
            continue
        except OSError as exc:
            changes.unreadable.append((path, st, f"cannot read: {exc.strerror or exc}"))
            continue
        if row is not None and row.sha256 == sha:  # touched, same content: refresh the stat, keep the result
            changes.touched.append((row.id, st))
            _same(changes, path, row)
            continue
        changes.pending.append(PendingFile(path, st, sha, file_dims(path)))
    changes.gone = {p for p in known if p not in seen}
    return changes


def _same(changes: Changes, path: str, row: KnownFile) -> None:
    """A file whose content is what the index recorded: unchanged, or a known failure (reported again)."""
    if row.error is None:
        changes.unchanged += 1
    else:
        changes.known_failed.append((path, row.error))
