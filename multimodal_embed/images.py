"""Image inputs: robust decoding of real-world files, and CLIP-style preprocessing read from the model folder.

:func:`load_image` turns a path, URL, bytes, binary file, PIL image or numpy array into an 8-bit RGB PIL image
(EXIF orientation applied, first frame of animations, high bit depths scaled, transparency composited on
white, CMYK and LAB converted, Pillow's decompression-bomb limit kept on). Every failure is an
:class:`~multimodal_embed.errors.ImageDecodeError` naming the item and the reason.

:class:`ImagePreprocessor` reproduces transformers' PIL-backend ``CLIPImageProcessor`` for a
``preprocessor_config.json``: PIL resize on uint8 (``{"height", "width"}`` or ``{"shortest_edge"}``),
center crop, rescale, normalise.
"""

from __future__ import annotations

import errno
import http.client
import io
import logging
import math
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image, ImageOps

from .errors import ConfigError, ImageDecodeError, InvalidInputError
from .imagefiles import NOT_REGULAR, open_regular

ImageInput = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray, Any]  # noqa: UP007

logger = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
URL_TIMEOUT_S = 20.0
URL_MAX_BYTES = 50 * 1024 * 1024  # also the most read from a file-like object (a pipe, a socket, /dev/zero)
# High-bit-depth images (16-bit, I, F) are scaled to 8 bits this many pixels at a time (float64 scratch of 8 MB)
STRIP_PIXELS = 1 << 20
# The most bytes that the images being decoded at once in this process may take (all decode workers of all
# encoders together; an image larger than this decodes alone). See DecodeBudget.
DECODE_BUDGET_BYTES = 1 << 30
# Above this many times the output's pixels, a shortest-edge resize + center crop resizes only the region that
# survives the crop (PIL's resize box), so work and memory stay bounded by the output size for any aspect ratio
# (a 1x10000 image would otherwise be scaled to 224x2240000). Below it the full resize runs, as transformers does.
CROP_FIRST_FACTOR = 16
# The largest output side a preprocessor_config.json may ask for.
MAX_PREPROCESS_SIDE = 4096
# Resizes without a crop that would produce more than this many pixels are refused (per-item error).
MAX_RESIZE_PIXELS = 64 * 1024 * 1024
# JPEG draft decoding keeps at least this many times the resize target on each side (see benchmarks/RESULTS.md)
DRAFT_MARGIN = 2.0


def describe(item: Any, index: int | None = None) -> str:
    """A short, safe name for an input item (for error messages)."""
    if isinstance(item, (str, os.PathLike)):
        name = repr(os.fspath(item))
    elif isinstance(item, (bytes, bytearray, memoryview)):
        name = f"<{len(item)} bytes>"
    elif isinstance(item, Image.Image):
        name = f"<PIL image {item.mode} {item.size[0]}x{item.size[1]}>"
    elif isinstance(item, np.ndarray):
        name = f"<array {item.dtype} {tuple(item.shape)}>"
    else:
        name = f"<{type(item).__name__}>"
    return f"#{index} {name}" if index is not None else name


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
URL_SCHEMES = ("http", "https")


def source_kind(text: str) -> str:
    """Whether a string names an http(s) URL (``"url"``) or a local path (``"path"``): the one place that decides.

    A string starting with ``scheme://`` is a URL; the scheme is matched case-insensitively (``HTTP://`` is a
    URL). Only ``http`` and ``https`` are fetched: ``file://``, ``ftp://`` and every other scheme raise
    :class:`~multimodal_embed.errors.InvalidInputError` instead of being read as a local path. Anything else is a
    path. Callers that take free text (a search box) should not call this on it: text is text.
    """
    match = _SCHEME.match(text)
    if match is None:
        return "path"
    scheme = match.group(1).lower()
    if scheme in URL_SCHEMES:
        return "url"
    raise InvalidInputError(f"unsupported URL scheme {scheme!r} in {text[:200]!r}: only http(s) URLs and local "
                            f"paths are accepted")


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follow at most a few redirects, and only to http(s) URLs."""

    max_redirections = 5

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        scheme = urllib.parse.urlsplit(newurl).scheme.lower()
        if scheme not in URL_SCHEMES:
            raise ValueError(f"redirect to a {scheme or 'relative'!r} URL refused (only http(s) redirects are "
                             f"followed)")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class _Deadline:
    """An overall deadline for one download: every socket it opens is shut down when the time is up, which
    wakes any blocked read (slow headers, a body dripping bytes, a stalled redirect)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.end = time.monotonic() + seconds
        self.expired = False
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._timer = threading.Timer(max(seconds, 0.0), self._expire)
        self._timer.daemon = True

    def remaining(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            self.expired = True
            raise TimeoutError(f"download took longer than {self.seconds:g} s")
        return left

    def connect(self, address: Any, timeout: Any = None, source_address: Any = None, **kw: Any) -> socket.socket:
        sock = socket.create_connection(address, self.remaining(), source_address, **kw)
        with self._lock:
            self._socks.append(sock.dup())  # the dup survives the TLS wrap, which detaches `sock`
            if self.expired:
                self._shutdown()
        return sock

    def connection(self, base: type[http.client.HTTPConnection]) -> Any:
        def make(host: str, **kw: Any) -> http.client.HTTPConnection:
            kw["timeout"] = self.remaining()
            conn = base(host, **kw)
            conn._create_connection = self.connect  # type: ignore[attr-defined]
            return conn
        return make

    def _shutdown(self) -> None:
        for sock in self._socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            self._shutdown()

    def __enter__(self) -> _Deadline:  # noqa: PYI034
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        with self._lock:
            for sock in self._socks:
                sock.close()
            self._socks.clear()


def _opener(deadline: _Deadline) -> urllib.request.OpenerDirector:
    """An opener that speaks only http(s) (no file:, ftp:, data:), with the deadline's connections."""

    class HTTP(urllib.request.HTTPHandler):
        def http_open(self, req):  # type: ignore[no-untyped-def]
            return self.do_open(deadline.connection(http.client.HTTPConnection), req)

    class HTTPS(urllib.request.HTTPSHandler):
        def https_open(self, req):  # type: ignore[no-untyped-def]
            return self.do_open(deadline.connection(http.client.HTTPSConnection), req, context=self._context)

    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler(), urllib.request.UnknownHandler(), HTTP(), HTTPS(),
                    urllib.request.HTTPDefaultErrorHandler(), _RedirectHandler(), urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


def read_url(url: str, *, timeout: float = URL_TIMEOUT_S, max_bytes: int = URL_MAX_BYTES) -> bytes:
    """Download an http(s) URL: the whole exchange (connect, redirects, headers, body) within ``timeout``
    seconds, at most ``max_bytes``, redirects only to http(s). Raises ``ValueError``/``OSError`` subclasses."""
    if source_kind(url) != "url":
        raise InvalidInputError(f"not an http(s) URL: {url[:200]!r}")
    req = urllib.request.Request(url, headers={"User-Agent": "multimodal-embed"})
    with _Deadline(timeout) as deadline:
        try:
            with _opener(deadline).open(req, timeout=deadline.remaining()) as resp:
                length = resp.headers.get("Content-Length")
                if length is not None and length.isdigit() and int(length) > max_bytes:
                    raise ValueError(f"remote file is {int(length)} bytes, over the {max_bytes}-byte limit")
                chunks: list[bytes] = []
                size = 0
                while True:
                    deadline.remaining()
                    chunk = resp.read1(1 << 16)
                    if not chunk:
                        break
                    size += len(chunk)
                    if size > max_bytes:
                        raise ValueError(f"remote file is over the {max_bytes}-byte limit")
                    chunks.append(chunk)
                deadline.remaining()
        except (OSError, http.client.HTTPException, ValueError) as exc:
            if deadline.expired:
                raise TimeoutError(f"download took longer than {timeout:g} s (overall deadline)") from None
            if isinstance(exc, urllib.error.HTTPError):
                raise OSError(f"HTTP error {exc.code} {exc.reason}") from None
            if isinstance(exc, urllib.error.URLError):
                raise OSError(f"cannot download: {exc.reason}") from None
            if isinstance(exc, http.client.HTTPException):
                raise OSError(f"bad HTTP response: {type(exc).__name__} {exc}") from None
            raise
    return b"".join(chunks)


class DecodeBudget:
    """A bound on the memory of the images being decoded at the same time: :meth:`hold` waits while the images
    already held plus this one would exceed ``limit`` bytes (one image alone always proceeds), so N decode workers
    given N huge images take about ``limit``, not N times one image."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, nbytes: int) -> Iterator[None]:
        nbytes = max(0, min(int(nbytes), self.limit))
        with self._cond:
            while self.used and self.used + nbytes > self.limit:
                self._cond.wait()
            self.used += nbytes
        try:
            yield
        finally:
            with self._cond:
                self.used -= nbytes
                self._cond.notify_all()


DECODE_BUDGET = DecodeBudget(DECODE_BUDGET_BYTES)
_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "LA": 2, "La": 2, "PA": 2, "I;16": 2, "I;16L": 2, "I;16B": 2,
                    "I;16N": 2}


def decode_cost(img: Image.Image) -> int:
    """Bytes that decoding ``img`` (size and mode from its header) and converting it to RGB take at most: the decoded
    pixels, an 8-bit copy for high bit depths, and the RGB image (4 bytes a pixel in Pillow)."""
    w, h = img.size
    raw = _BYTES_PER_PIXEL.get(img.mode, 4)
    return w * h * (raw + (1 if img.mode in _HIGH_DEPTH else 0) + (0 if img.mode == "RGB" else 4))


def _read_capped(stream: Any, max_bytes: int) -> io.BytesIO:
    """At most ``max_bytes`` from a binary file-like object, or ``ValueError`` once it holds more (a stream without
    end, such as ``/dev/zero``, a pipe or a socket, is never read past the cap)."""
    buf = io.BytesIO()
    while True:
        chunk = stream.read(min(1 << 20, max_bytes + 1 - buf.tell()))
        if not chunk:
            break
        if not isinstance(chunk, (bytes, bytearray, memoryview)):
            raise TypeError(f"a file object must be opened in binary mode (its read() gave {type(chunk).__name__})")
        buf.write(chunk)
        if buf.tell() > max_bytes:
            raise ValueError(f"the stream is over the {max_bytes}-byte limit (url_max_bytes); reading stopped there")
    buf.seek(0)
    return buf


def _open_path(path: str | bytes, files: list[Any]) -> Image.Image:
    """Open a local image file: regular files only, never blocking (a FIFO or device is this item's error)."""
    try:
        fh = open_regular(path)
    except OSError as exc:
        if exc.errno == errno.EINVAL and exc.strerror == NOT_REGULAR:
            raise ValueError(NOT_REGULAR) from None
        raise
    files.append(fh)
    return Image.open(fh)


def _open(item: ImageInput, *, timeout: float, max_bytes: int, allow_urls: bool = True,
          files: list[Any] | None = None) -> Image.Image:
    files = [] if files is None else files  # files opened here, for the caller to close once the image is loaded
    if isinstance(item, Image.Image):
        return item
    if isinstance(item, np.ndarray):
        arr = item
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
            raise ValueError(f"numpy images must be HxW or HxWxC (C = 1, 3 or 4) uint8 arrays, got "
                             f"{arr.dtype} {arr.shape}")
        if arr.shape[0] == 0 or arr.shape[1] == 0:
            raise ValueError(f"empty image ({arr.shape[1]}x{arr.shape[0]} pixels)")
        return Image.fromarray(np.ascontiguousarray(arr))
    if isinstance(item, (bytes, bytearray, memoryview)):
        return Image.open(io.BytesIO(bytes(item)))
    if isinstance(item, (str, os.PathLike)):
        text = os.fspath(item)
        if isinstance(text, bytes):
            return _open_path(text, files)
        if source_kind(text) == "url":
            if not allow_urls:
                raise ValueError("URLs are not accepted here (allow_urls=False)")
            return Image.open(io.BytesIO(read_url(text, timeout=timeout, max_bytes=max_bytes)))
        return _open_path(os.path.expanduser(text), files)
    if hasattr(item, "read"):
        return Image.open(_read_capped(item, max_bytes))
    raise TypeError(f"unsupported image input type {type(item).__name__} (use a path, URL, bytes, a binary file, "
                    f"a PIL image or a uint8 numpy array)")


_HIGH_DEPTH = ("I", "I;16", "I;16L", "I;16B", "I;16N", "F")


def _to_uint8(arr: np.ndarray, mode: str, lo: float | None = None, top: float | None = None) -> np.ndarray:
    """Scale a high-bit-depth or float single-channel array to 0..255. ``lo``/``top``: the whole image's smallest
    and largest values when ``arr`` is one strip of it (default: the array's own; ``None`` when it has none)."""
    arr = arr.astype(np.float64)
    if mode.startswith("I;16"):
        return np.clip(arr / 257.0, 0, 255).round().astype(np.uint8)
    if lo is None and arr.size and not np.isnan(arr).all():
        lo, top = float(np.nanmin(arr)), float(np.nanmax(arr))
    if lo is None or top is None:
        pass  # empty or all NaN: zeros
    elif mode == "F" and lo >= 0 and top <= 1.0:
        arr = arr * 255.0
    elif top > 255:
        if top <= 65535 and lo >= 0:
            arr = arr / 257.0
        else:
            with np.errstate(invalid="ignore"):  # an infinite range: those values become NaN, then 0, as before
                arr = (arr - lo) * (255.0 / max(top - lo, 1e-12))
    return np.clip(np.nan_to_num(arr), 0, 255).round().astype(np.uint8)


def _high_depth_to_l(img: Image.Image) -> Image.Image:
    """A 16-bit, ``I`` or ``F`` image as 8-bit ``L``, converted ``STRIP_PIXELS`` at a time: the scratch is a few MB
    whatever the image's size (a full-size float64 copy was 8 bytes a pixel, several times over), with the same
    values as converting it whole."""
    w, h = img.size
    rows = max(1, STRIP_PIXELS // max(w, 1))
    bands = [(y, min(h, y + rows)) for y in range(0, h, rows)]

    def strip(y0: int, y1: int) -> np.ndarray:
        return np.asarray(img.crop((0, y0, w, y1)))

    lo = top = None
    if not img.mode.startswith("I;16"):  # the scale depends on the whole image's range: one pass to find it
        for y0, y1 in bands:
            part = strip(y0, y1)
            if part.dtype.kind == "f":
                part = part[~np.isnan(part)]
            if part.size:
                lo = float(part.min()) if lo is None else min(lo, float(part.min()))
                top = float(part.max()) if top is None else max(top, float(part.max()))
    out = np.zeros((h, w), dtype=np.uint8)  # an image without a value (all NaN) stays zeros, as before
    if lo is not None or img.mode.startswith("I;16"):
        for y0, y1 in bands:
            out[y0:y1] = _to_uint8(strip(y0, y1), img.mode, lo, top)
    return Image.fromarray(out, "L")


def _white(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparency composited on white."""
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode in _HIGH_DEPTH:
        return _high_depth_to_l(img).convert("RGB")
    if mode == "1":
        return img.convert("L").convert("RGB")
    if mode == "LAB":
        from PIL import ImageCms

        transform = ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"),
                                            "LAB", "RGB")
        return ImageCms.applyTransform(img, transform)
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
        return _white(img)
    if mode == "P":
        return img.convert("RGB")
    return img.convert("RGB")  # L, CMYK, YCbCr, HSV, RGBX ...


def load_image(
    item: ImageInput,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    url_timeout: float = URL_TIMEOUT_S,
    url_max_bytes: int = URL_MAX_BYTES,
    name: str | None = None,
    draft: tuple[int, int] | None = None,
    allow_urls: bool = True,
    reserve: Callable[[int], object] | None = None,
) -> Image.Image:
    """Decode one image input to an 8-bit RGB PIL image, or raise :class:`ImageDecodeError`.

    ``max_pixels`` is the decompression-bomb limit (``None`` disables it; not recommended for untrusted files).
    ``draft=(w, h)`` lets a JPEG decode at 1/2, 1/4 or 1/8 scale (DCT scaling) while staying at least ``w x h``;
    other formats ignore it. A string is a URL or a path as :func:`source_kind` decides; ``allow_urls=False``
    refuses URLs (for callers whose inputs come from untrusted users). A URL download has an overall deadline
    of ``url_timeout`` seconds and a size cap of ``url_max_bytes``, which also caps what is read from a file-like
    object. A path must name a regular file (a FIFO or a device is refused without blocking). ``reserve(nbytes)``
    is called with :func:`decode_cost` once the header is read, before the pixels are decoded (the decode workers
    pass :data:`DECODE_BUDGET`'s hold).
    """
    label = name or describe(item)
    files: list[Any] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = _open(item, timeout=url_timeout, max_bytes=url_max_bytes, allow_urls=allow_urls, files=files)
            w, h = img.size
            if w <= 0 or h <= 0:
                raise ValueError(f"empty image ({w}x{h} pixels)")
            if max_pixels is not None and w * h > max_pixels:
                raise ValueError(f"{w}x{h} = {w * h} pixels is over the decompression-bomb limit of {max_pixels} "
                                 f"(raise max_pixels if the file is trusted)")
            if getattr(img, "is_animated", False) and img.format != "PSD":
                img.seek(0)  # first frame (a PSD opens at its first layer, and seek(0) would fail there)
            if draft is not None and img.format == "JPEG" and img.mode in ("RGB", "L"):
                img.draft(img.mode, draft)
            if reserve is not None:
                reserve(decode_cost(img))
            img.load()
            try:
                img = ImageOps.exif_transpose(img)
            except Exception as exc:  # noqa: BLE001 - a broken EXIF block does not make the pixels unusable
                logger.debug("%s: EXIF orientation not applied (%s)", label, exc)
            return to_rgb(img)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(label, f"decompression bomb: {exc}") from None
    except Image.DecompressionBombWarning as exc:
        raise ImageDecodeError(label, f"decompression bomb: {exc}") from None
    except FileNotFoundError:
        raise ImageDecodeError(label, "file not found") from None
    except Image.UnidentifiedImageError:
        raise ImageDecodeError(label, "not a recognised image file (corrupt or unsupported format)") from None
    except TimeoutError as exc:
        raise ImageDecodeError(label, str(exc) or "timed out") from None
    except (OSError, SyntaxError, ValueError, TypeError, EOFError, MemoryError, KeyError, IndexError) as exc:
        reason = str(exc) or type(exc).__name__
        if "truncated" in reason.lower():
            reason = f"truncated file ({reason})"
        raise ImageDecodeError(label, reason) from None
    except Exception as exc:  # Pillow plugins raise anything (DDS: NotImplementedError)
        logger.debug("%s: decoder raised", label, exc_info=True)
        raise ImageDecodeError(label, f"decoder failed: {type(exc).__name__}: {exc}") from None
    finally:
        for fh in files:  # the pixels are loaded (or the item failed): the file is no longer read
            fh.close()


@dataclass(frozen=True)
class ImagePreprocessor:
    """CLIP-style preprocessing as transformers' PIL backend applies a ``preprocessor_config.json``."""

    size: dict[str, int]
    crop_size: dict[str, int] | None
    resample: int = 3
    do_resize: bool = True
    do_center_crop: bool = True
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, ...] = (0.48145466, 0.4578275, 0.40821073)
    image_std: tuple[float, ...] = (0.26862954, 0.26130258, 0.27577711)

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> ImagePreprocessor:
        size = cfg.get("size", {"shortest_edge": 224})
        if isinstance(size, int):
            size = {"shortest_edge": size}
        if not isinstance(size, dict):
            raise ConfigError(f"preprocessing size={size!r} must be an integer or a mapping")
        if not ({"height", "width"} <= size.keys() or "shortest_edge" in size):
            raise ConfigError(f"unsupported preprocessing size {size}")
        crop = cfg.get("crop_size")
        if isinstance(crop, int):
            crop = {"height": crop, "width": crop}
        for key, group in (("size", size), ("crop_size", crop or {})):
            if not isinstance(group, dict):
                raise ConfigError(f"preprocessing {key}={group!r} must be an integer or a mapping")
            for sub, value in group.items():
                if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                          or not 1 <= value <= MAX_PREPROCESS_SIDE):
                    raise ConfigError(f"preprocessing {key}.{sub}={value!r} must be an integer from 1 to "
                                      f"{MAX_PREPROCESS_SIDE}")
        return cls(
            size=dict(size), crop_size=dict(crop) if crop else None, resample=int(cfg.get("resample", 3)),
            do_resize=bool(cfg.get("do_resize", True)), do_center_crop=bool(cfg.get("do_center_crop", True)),
            do_rescale=bool(cfg.get("do_rescale", True)), rescale_factor=float(cfg.get("rescale_factor", 1 / 255)),
            do_normalize=bool(cfg.get("do_normalize", True)),
            image_mean=tuple(cfg.get("image_mean", cls.image_mean)),
            image_std=tuple(cfg.get("image_std", cls.image_std)),
        )

    @classmethod
    def from_folder(cls, folder: str | Path, variant: str | None = None) -> ImagePreprocessor:
        """Read ``preprocessor_config.json``. ``variant="shortest_edge"`` selects the original upload's resize
        (short side to the size, then center crop), as used in nomic's training and evaluation."""
        path = Path(folder) / "preprocessor_config.json"
        from .utils import read_json  # torch, which utils imports, is not needed to decode images

        cfg = read_json(path) if path.is_file() else {}
        if variant == "shortest_edge":
            size = cfg.get("size", {})
            edge = size.get("shortest_edge") or min(size.get("height", 224), size.get("width", 224))
            cfg = {**cfg, "size": {"shortest_edge": edge}}
        elif variant not in (None, "config"):
            raise ConfigError(f"unknown preprocessing variant {variant!r}; use 'config' or 'shortest_edge'")
        return cls.from_dict(cfg)

    def draft_size(self, margin: float = DRAFT_MARGIN) -> tuple[int, int]:
        """The smallest decode size that keeps ``margin`` x the resize target on both sides, for JPEG draft."""
        if "height" in self.size:
            edge = max(self.size["height"], self.size["width"])
        else:
            edge = self.size["shortest_edge"]
        side = round(edge * margin)
        return side, side

    def output_size(self) -> tuple[int, int]:
        if self.do_center_crop and self.crop_size:
            return self.crop_size["height"], self.crop_size["width"]
        if "height" in self.size:
            return self.size["height"], self.size["width"]
        raise ConfigError("shortest_edge resize without a center crop gives images of varying size")

    def resized_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """``(width, height)`` after the resize step, for an input of ``size = (width, height)``."""
        if "height" in self.size:
            return self.size["width"], self.size["height"]
        w, h = size
        short, long = (w, h) if w <= h else (h, w)
        edge = self.size["shortest_edge"]
        new_short, new_long = edge, int(edge * long / short)
        return (new_short, new_long) if w <= h else (new_long, new_short)

    def resize(self, img: Image.Image) -> Image.Image:
        new_w, new_h = self.resized_size(img.size)
        if (new_w, new_h) == img.size:
            return img
        if new_w * new_h > MAX_RESIZE_PIXELS:
            raise ValueError(f"a {img.size[0]}x{img.size[1]} image would be resized to {new_w}x{new_h} pixels "
                             f"(aspect ratio too extreme; limit {MAX_RESIZE_PIXELS} pixels)")
        return img.resize((new_w, new_h), resample=self.resample)

    def _resize_surviving(self, img: Image.Image, new_w: int, new_h: int) -> np.ndarray:
        """Resize only the part of the ``new_w x new_h`` resized image that the center crop keeps (same filter
        scale and sample positions, the full image as the filter's support), as a uint8 array."""
        assert self.crop_size is not None
        ch, cw = self.crop_size["height"], self.crop_size["width"]
        top = (new_h - ch) // 2 if new_h >= ch else 0
        left = (new_w - cw) // 2 if new_w >= cw else 0
        out_h, out_w = min(ch, new_h), min(cw, new_w)
        w, h = img.size
        sx, sy = w / new_w, h / new_h
        x0, y0, x1, y1 = left * sx, top * sy, (left + out_w) * sx, (top + out_h) * sy
        # Cut the source to the rows/columns the filter reads (support <= 3 for Pillow's filters, times the
        # downscale factor), so the box is small and precise and Pillow's tall-image pass order does not kick in.
        mx, my = math.ceil(3 * max(sx, 1.0)) + 2, math.ceil(3 * max(sy, 1.0)) + 2
        cx0, cy0 = max(0, math.floor(x0) - mx), max(0, math.floor(y0) - my)
        cx1, cy1 = min(w, math.ceil(x1) + mx), min(h, math.ceil(y1) + my)
        src = img.crop((cx0, cy0, cx1, cy1))
        part = src.resize((out_w, out_h), resample=self.resample, box=(x0 - cx0, y0 - cy0, x1 - cx0, y1 - cy0))
        return np.asarray(part, dtype=np.uint8)

    def to_uint8(self, img: Image.Image) -> np.ndarray:
        """Resize and crop: an 8-bit RGB image to a ``(3, H, W)`` uint8 array (the integer half of the work).

        Work and memory are bounded by the output size whatever the aspect ratio: when the full resize would be
        over ``CROP_FIRST_FACTOR`` x the crop, only the region that survives the crop is resized.
        """
        if img.size[0] <= 0 or img.size[1] <= 0:
            raise ValueError(f"empty image ({img.size[0]}x{img.size[1]} pixels)")
        cropping = self.do_center_crop and self.crop_size
        if self.do_resize:
            new_w, new_h = self.resized_size(img.size)
            if cropping and new_w * new_h > CROP_FIRST_FACTOR * self.crop_size["height"] * self.crop_size["width"]:
                arr = self._resize_surviving(img, new_w, new_h)
                arr = _center_crop(arr, self.crop_size["height"], self.crop_size["width"])
                return np.ascontiguousarray(arr.transpose(2, 0, 1))
            img = self.resize(img)
        arr = np.asarray(img, dtype=np.uint8)
        if self.do_center_crop and self.crop_size:
            arr = _center_crop(arr, self.crop_size["height"], self.crop_size["width"])
        return np.ascontiguousarray(arr.transpose(2, 0, 1))

    def normalize(self, x: Any) -> Any:
        """Rescale + normalise a uint8 ``(B, 3, H, W)`` torch tensor on its device, with the same arithmetic as
        :meth:`__call__` (float64 rescale, float32 normalisation), so results are bit-identical."""
        import torch

        if x.device.type == "mps":  # no float64 there: do it on the CPU
            return self.normalize(x.cpu()).to(x.device)
        y = (x.to(torch.float64) * self.rescale_factor).to(torch.float32) if self.do_rescale else x.to(torch.float32)
        if self.do_normalize:
            mean = torch.tensor(self.image_mean, dtype=torch.float32, device=x.device)[:, None, None]
            std = torch.tensor(self.image_std, dtype=torch.float32, device=x.device)[:, None, None]
            y = (y - mean) / std
        return y

    def __call__(self, img: Image.Image) -> np.ndarray:
        """An 8-bit RGB image to a ``(3, H, W)`` float32 array."""
        x = self.to_uint8(img)
        if self.do_rescale:
            x = (x.astype(np.float64) * self.rescale_factor).astype(np.float32)
        else:
            x = x.astype(np.float32)
        if self.do_normalize:
            mean = np.asarray(self.image_mean, dtype=np.float32)[:, None, None]
            std = np.asarray(self.image_std, dtype=np.float32)[:, None, None]
            x = (x - mean) / std
        return np.ascontiguousarray(x, dtype=np.float32)


def _center_crop(arr: np.ndarray, ch: int, cw: int) -> np.ndarray:
    h, w = arr.shape[:2]
    if h < ch or w < cw:  # pad with zeros as transformers does
        ph, pw = max(ch - h, 0), max(cw - w, 0)
        arr = np.pad(arr, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
        h, w = arr.shape[:2]
    top, left = (h - ch) // 2, (w - cw) // 2
    return arr[top:top + ch, left:left + cw]
