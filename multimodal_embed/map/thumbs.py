"""Small JPEG thumbnails for a map, through the package's hardened image loader.

Every file is decoded by :func:`multimodal_embed.images.load_image` (regular files only, the decompression-bomb
limit, JPEG draft decoding); a file that fails gets no thumbnail and its reason (a grey point on the map), and
never stops the others. The total size is bounded: once ``budget_bytes`` of JPEG is spent, the remaining points
(in a seeded random order, so the thumbnails cover the whole map) get none.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence

import numpy as np

from ..errors import ImageDecodeError
from ..utils import progress

logger = logging.getLogger(__name__)

THUMB_SIDE = 64
THUMB_QUALITY = 70
THUMB_BUDGET_BYTES = 15_000_000  # raw JPEG bytes (base64 in the HTML adds a third)


def thumbnail(path: str, side: int = THUMB_SIDE, quality: int = THUMB_QUALITY) -> bytes:
    """A JPEG of at most ``side`` pixels a side, or :class:`ImageDecodeError` naming the file."""
    from PIL import Image

    from ..images import load_image

    img = load_image(path, draft=(side, side), allow_urls=False)
    img.thumbnail((side, side), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def make_thumbnails(paths: Sequence[str], *, side: int = THUMB_SIDE, quality: int = THUMB_QUALITY,
                    budget_bytes: int = THUMB_BUDGET_BYTES, seed: int = 0, show_progress: bool | None = None
                    ) -> tuple[list[bytes | None], list[str | None]]:
    """(thumbnail or ``None``, error reason or ``None``) per path. Points past the budget have neither."""
    thumbs: list[bytes | None] = [None] * len(paths)
    errors: list[str | None] = [None] * len(paths)
    order = np.random.default_rng(seed).permutation(len(paths))
    spent, skipped = 0, 0
    for i in progress(order, show_progress, desc="thumbnails", unit="img"):
        if spent >= budget_bytes:
            skipped += 1
            continue
        try:
            data = thumbnail(paths[i], side, quality)
        except ImageDecodeError as exc:
            errors[i] = exc.reason
            continue
        except MemoryError:
            errors[i] = "out of memory decoding it"
            continue
        thumbs[i] = data
        spent += len(data)
    failed = sum(e is not None for e in errors)
    if failed:
        logger.warning("map: %d of %d images could not be read for a thumbnail (grey points)", failed, len(paths))
    if skipped:
        logger.info("map: the thumbnail budget (%d bytes) covered %d of %d images", budget_bytes,
                    len(paths) - skipped, len(paths))
    return thumbs, errors
