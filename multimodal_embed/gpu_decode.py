"""JPEG decoding and preprocessing on the model's device (nvJPEG on CUDA), for encoders fed by an
:class:`~multimodal_embed.images.ImagePreprocessor`.

Worker threads read each input's bytes and inspect the JPEG markers (no decoding). Plain 8-bit baseline,
extended or progressive 3-component JPEGs that end in an EOI marker become a :class:`JpegJob`; everything else
(other formats, CMYK, grayscale, arithmetic or lossless coding, truncated files, odd EXIF, PIL images,
URLs...) goes through the robust CPU loader in the same thread, exactly as without this module. A single
decode thread then decodes each batch's jobs with ``torchvision.io.decode_jpeg(list, device=...)``, applies
the EXIF orientation and runs the resize + crop on the device with Pillow's own bicubic (antialiased)
coefficients and its two-pass rounding, so the uint8 crops match ``ImagePreprocessor.to_uint8`` (float32
sums vs Pillow's integers: ~1e-4 of the values differ by 1-2 levels) up to decoder differences (none on CPU,
where torchvision and Pillow share libjpeg-turbo). Any job the device cannot decode falls back to the CPU
loader: nothing is lost.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import struct
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .errors import ImageDecodeError, InvalidInputError, MissingDependencyError
from .imagefiles import open_regular
from .images import ImagePreprocessor
from .utils import worker_pool

logger = logging.getLogger(__name__)

# SOF markers the device path takes: baseline, extended sequential, progressive (Huffman coding). Arithmetic
# (0xC9-0xCB), lossless (0xC3) and hierarchical (0xC5-0xC7, 0xCD-0xCF) go to the CPU loader.
DEVICE_SOF = frozenset({0xC0, 0xC1, 0xC2})
_ALL_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_XMP_ORIENTATION = re.compile(rb"tiff:Orientation")
_PIL_BICUBIC = 3


@dataclass
class JpegJob:
    """A JPEG to decode on the device: its bytes and EXIF orientation (1 = as stored)."""

    data: bytes
    orientation: int
    width: int
    height: int


@dataclass(frozen=True)
class JpegHeader:
    sof: int
    precision: int
    width: int
    height: int
    component_ids: tuple[int, ...]
    orientation: int  # 1 when absent
    adobe_transform: int | None
    odd: str | None  # why the device path must not take this file, if anything in the headers is unusual


def torchvision_available() -> bool:
    try:
        from torchvision.io import decode_jpeg  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return False
    return True


def _exif_orientation(payload: bytes) -> int | None:
    """Orientation (tag 0x0112) from an APP1 ``Exif\\0\\0`` payload; 1 if absent; ``None`` if malformed."""
    tiff = payload[6:]
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return None
    end = "<" if tiff[:2] == b"II" else ">"
    magic, ifd = struct.unpack(end + "HI", tiff[2:8])
    if magic != 42 or ifd + 2 > len(tiff):
        return None
    (count,) = struct.unpack(end + "H", tiff[ifd:ifd + 2])
    if ifd + 2 + 12 * count > len(tiff):
        return None
    for k in range(count):
        entry = tiff[ifd + 2 + 12 * k: ifd + 14 + 12 * k]
        tag, kind, n = struct.unpack(end + "HHI", entry[:8])
        if tag == 0x0112:
            if kind != 3 or n != 1:
                return None
            return struct.unpack(end + "H", entry[8:10])[0]
    return 1


def parse_jpeg_header(data: bytes) -> JpegHeader | None:
    """The frame header, EXIF orientation and Adobe transform of a JPEG, from its markers (nothing decoded).

    ``None`` if ``data`` is not a JPEG or its marker structure cannot be followed up to the first scan.
    """
    if len(data) < 4 or data[:2] != b"\xff\xd8":
        return None
    pos, n = 2, len(data)
    orientation: int | None = 1
    seen_exif = False
    xmp_orientation = False
    adobe = None
    frame = None
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # standalone markers
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        if length < 2 or pos + 2 + length > n:
            return None
        payload = data[pos + 4:pos + 2 + length]
        if marker == 0xE1 and payload[:6] == b"Exif\x00\x00" and not seen_exif:
            seen_exif = True  # Pillow reads the first Exif segment only
            orientation = _exif_orientation(payload)
        elif marker == 0xE1 and _XMP_ORIENTATION.search(payload):
            xmp_orientation = True  # Pillow falls back to XMP tiff:Orientation: leave such files to it
        elif marker == 0xEE and payload[:5] == b"Adobe" and len(payload) >= 12:
            adobe = payload[11]
        elif marker in _ALL_SOF:
            if len(payload) < 6:
                return None
            precision, height, width, ncomp = struct.unpack(">BHHB", payload[:6])
            if len(payload) < 6 + 3 * ncomp:
                return None
            ids = tuple(payload[6 + 3 * c] for c in range(ncomp))
            frame = (marker, precision, width, height, ids)
        elif marker == 0xDA:  # start of scan: the headers are over
            break
        pos += 2 + length
    if frame is None:
        return None
    marker, precision, width, height, ids = frame
    odd = None
    if orientation is None:
        odd = "malformed EXIF block"
    elif xmp_orientation and orientation == 1:
        odd = "orientation in XMP"
    return JpegHeader(marker, precision, width, height, ids, orientation or 1, adobe, odd)


def device_reason(header: JpegHeader | None, data: bytes, max_pixels: int | None) -> str | None:
    """Why this file must go to the CPU loader, or ``None`` if the device path reproduces it."""
    if header is None:
        return "not a JPEG"
    if header.odd:
        return header.odd
    if header.sof not in DEVICE_SOF:
        return f"SOF marker 0x{header.sof:02X}"
    if header.precision != 8:
        return f"{header.precision}-bit samples"
    if len(header.component_ids) != 3:
        return f"{len(header.component_ids)} components"
    if header.adobe_transform == 0 or header.component_ids == (ord("R"), ord("G"), ord("B")):
        return "RGB (not YCbCr) colour coding"
    if header.width < 1 or header.height < 1:
        return "no frame size"
    if max_pixels is not None and header.width * header.height > max_pixels:
        return "over the pixel limit"
    if data.rstrip(b"\x00")[-2:] != b"\xff\xd9":
        return "no EOI marker at the end (truncated or trailing data)"
    return None


def read_bytes(item: Any) -> bytes | None:
    """The encoded bytes of a local path or a bytes-like input; ``None`` for anything else (URLs, PIL images,
    arrays, file objects) or a path that cannot be read (the CPU loader then reports it)."""
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    if isinstance(item, (str, os.PathLike)):
        text = os.fspath(item)
        if isinstance(text, bytes) or "://" in text.split("/", 1)[0] + "/":
            return None
        try:
            with open_regular(os.path.expanduser(text)) as fh:  # a FIFO or device: the CPU loader reports it
                return fh.read()
        except OSError:
            return None
    return None


# -- Pillow's resampling, as matrices ---------------------------------------------------------------------

def _bicubic(x: float) -> float:
    a = -0.5
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    if x < 2.0:
        return (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return 0.0


@functools.lru_cache(maxsize=512)
def pil_resize_matrix(in_size: int, out_size: int) -> torch.Tensor:
    """``(out_size, in_size)`` float32 weights of Pillow's antialiased bicubic resample along one axis,
    with its 22-bit fixed-point rounding of the coefficients (``precompute_coeffs`` + ``normalize_coeffs_8bpc``
    in Pillow's Resample.c)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    one = 1 << 22
    w = np.zeros((out_size, in_size), dtype=np.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        ss = 1.0 / filterscale
        k = np.array([_bicubic((x - center + 0.5) * ss) for x in range(xmin, xmax)])
        total = k.sum()
        if total != 0.0:
            k = k / total
        q = np.where(k < 0, np.trunc(-0.5 + k * one), np.trunc(0.5 + k * one))
        w[xx, xmin:xmax] = q / one
    return torch.from_numpy(w.astype(np.float32))


def orient(img: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation to a ``(..., H, W)`` tensor as ``PIL.ImageOps.exif_transpose`` does."""
    if orientation == 2:
        return img.flip(-1)
    if orientation == 3:
        return img.flip(-1, -2)
    if orientation == 4:
        return img.flip(-2)
    if orientation == 5:
        return img.transpose(-1, -2)
    if orientation == 6:
        return img.transpose(-1, -2).flip(-1)
    if orientation == 7:
        return img.transpose(-1, -2).flip(-1, -2)
    if orientation == 8:
        return img.transpose(-1, -2).flip(-2)
    return img


@dataclass(frozen=True)
class _Axis:
    """One axis of a resample + crop: ``out = mat @ input[lo:hi]`` (rows of ``mat`` = the kept outputs)."""

    mat: torch.Tensor  # (out, hi - lo) float32
    lo: int
    hi: int
    resample: bool  # round to uint8 after this pass (Pillow does, after each real resampling pass)


class DevicePreprocessor:
    """``ImagePreprocessor.to_uint8`` on a batch of same-size ``(B, 3, H, W)`` uint8 tensors, on their device.

    Each pass is one float32 matmul with Pillow's quantised coefficients, then Pillow's rounding to uint8; only
    the center-cropped outputs, and the input rows and columns they read, are computed. (With TF32 matmuls
    enabled, ``torch.backends.cuda.matmul.allow_tf32 = True``, a few more pixels differ by one level.)
    """

    def __init__(self, preprocessor: ImagePreprocessor):
        if preprocessor.do_resize and preprocessor.resample != _PIL_BICUBIC:
            raise InvalidInputError(f"gpu_decode reproduces bicubic resizing only; this model's preprocessing "
                                    f"uses PIL resample={preprocessor.resample} (pass gpu_decode=False)")
        self.pre = preprocessor
        self._axes: dict[tuple[int, int, int, str], _Axis | None] = {}

    def _target(self, h: int, w: int) -> tuple[int, int]:
        size = self.pre.size
        if not self.pre.do_resize:
            return h, w
        if "height" in size:
            return size["height"], size["width"]
        edge = size["shortest_edge"]
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = edge, int(edge * long / short)
        return (new_long, new_short) if w <= h else (new_short, new_long)

    def _axis(self, in_size: int, out_size: int, crop: int | None, device: torch.device) -> _Axis | None:
        """The kept (center-cropped, zero-padded) outputs along one axis; ``None`` = identity."""
        if in_size == out_size and (crop is None or crop == out_size):
            return None
        key = (in_size, out_size, crop or -1, str(device))
        if key in self._axes:
            return self._axes[key]
        mat = pil_resize_matrix(in_size, out_size) if in_size != out_size else torch.eye(in_size)
        if crop is not None:
            if out_size < crop:  # zero padding, as transformers' center crop does
                pad = crop - out_size
                mat = torch.cat([mat.new_zeros(pad // 2, in_size), mat, mat.new_zeros(pad - pad // 2, in_size)])
            else:
                start = (out_size - crop) // 2
                mat = mat[start:start + crop]
        used = mat.ne(0).any(0).nonzero().flatten()
        lo, hi = (int(used[0]), int(used[-1]) + 1) if len(used) else (0, 1)
        axis = _Axis(mat[:, lo:hi].contiguous().to(device), lo, hi, in_size != out_size)
        if len(self._axes) > 512:
            self._axes.clear()
        self._axes[key] = axis
        return axis

    @staticmethod
    def _finish(x: torch.Tensor, axis: _Axis) -> torch.Tensor:
        return torch.floor(x.add_(0.5)).clamp_(0, 255) if axis.resample else x

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        _, _, h, w = batch.shape
        new_h, new_w = self._target(h, w)
        crop = self.pre.crop_size if self.pre.do_center_crop and self.pre.crop_size else None
        rows = self._axis(h, new_h, crop["height"] if crop else None, batch.device)
        cols = self._axis(w, new_w, crop["width"] if crop else None, batch.device)
        if rows is None and cols is None:
            return batch
        x = batch
        if rows is not None:
            x = x.narrow(-2, rows.lo, rows.hi - rows.lo)
        if cols is not None:
            x = x.narrow(-1, cols.lo, cols.hi - cols.lo)
        x = x.to(torch.float32)
        # Pillow resamples horizontally first, rounding each pass to uint8
        if cols is not None:
            x = self._finish(torch.matmul(x, cols.mat.T), cols)
        if rows is not None:
            x = self._finish(torch.matmul(rows.mat, x), rows)
        return x.to(torch.uint8)


class JpegDeviceDecoder:
    """Per-item routing (worker threads) and batched device decode (one decode thread) for one encoder."""

    chunk = 32  # images resized together (same size): 32 x 1024x768 is ~300 MB of float32 work space

    def __init__(self, preprocessor: ImagePreprocessor, device: torch.device, *, max_pixels: int | None):
        if not torchvision_available():
            raise MissingDependencyError("gpu_decode needs torchvision (pip install torchvision)")
        # torchvision 0.29 marks its decoders deprecated in favour of TorchCodec; they are what we use here
        warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                                category=DeprecationWarning)
        self.device = torch.device(device)
        self.max_pixels = max_pixels
        self.resize = DevicePreprocessor(preprocessor)
        self.n_device = 0
        self.n_fallback = 0

    # -- worker threads ------------------------------------------------------------------------------------
    def route(self, item: Any, index: int, fallback: Callable[[Any, int], Any]) -> Any:
        """A :class:`JpegJob` for the device, or the CPU loader's result (which may raise ImageDecodeError)."""
        data = read_bytes(item)
        if data is not None:
            header = parse_jpeg_header(data)
            reason = device_reason(header, data, self.max_pixels)
            if reason is None:
                return JpegJob(data, header.orientation, header.width, header.height)
            logger.debug("#%d: CPU decode (%s)", index, reason)
        return fallback(item, index)

    # -- decode thread -------------------------------------------------------------------------------------
    def _decode(self, jobs: list[JpegJob]) -> list[torch.Tensor | None]:
        from torchvision.io import ImageReadMode, decode_jpeg

        tensors = [torch.frombuffer(bytearray(j.data), dtype=torch.uint8) for j in jobs]
        try:
            out = decode_jpeg(tensors, mode=ImageReadMode.RGB, device=self.device)
            return list(out)
        except Exception as exc:  # noqa: BLE001 - one bad file fails the whole batch: retry one by one
            logger.debug("batched device decode failed (%s); decoding one by one", exc)
        results: list[torch.Tensor | None] = []
        for t in tensors:
            try:
                results.append(decode_jpeg(t, mode=ImageReadMode.RGB, device=self.device))
            except Exception:  # noqa: BLE001 - the CPU loader decides what is wrong with it
                results.append(None)
        return results

    def finish(self, batch: list[tuple[int, Any]], items: Any, fallback: Callable[[Any, int], Any]
               ) -> list[tuple[int, Any]]:
        """Decode a batch's jobs on the device; other entries pass through unchanged."""
        jobs = [(k, r) for k, (_, r) in enumerate(batch) if isinstance(r, JpegJob)]
        if not jobs:
            return batch
        out = list(batch)
        with torch.inference_mode():
            decoded = self._decode([j for _, j in jobs])
            groups: dict[tuple[int, int], list[tuple[int, torch.Tensor]]] = {}
            for (k, job), img in zip(jobs, decoded):
                index = batch[k][0]
                expected = (job.height, job.width)
                if img is None or tuple(img.shape) != (3, *expected):
                    out[k] = (index, self._fallback(items, index, fallback))
                    continue
                img = orient(img, job.orientation)
                groups.setdefault(tuple(img.shape[-2:]), []).append((k, img))
            for group in groups.values():
                for start in range(0, len(group), self.chunk):  # bounds the float32 working set
                    members = group[start:start + self.chunk]
                    crops = self.resize(torch.stack([img for _, img in members]))
                    for (k, _), crop in zip(members, crops):
                        out[k] = (batch[k][0], crop)
                        self.n_device += 1
        return out

    def _fallback(self, items: Any, index: int, fallback: Callable[[Any, int], Any]) -> Any:
        self.n_fallback += 1
        try:
            return fallback(items[index], index)
        except ImageDecodeError as exc:
            return exc

    def stage(self, batches: Iterator[list[tuple[int, Any]]], items: Any, fallback: Callable[[Any, int], Any],
              held: ExitStack) -> Iterator[list[tuple[int, Any]]]:
        """Decode batch k+1 in a decode thread while the caller runs the model on batch k. The thread's pool is
        entered on ``held`` (the caller's), so it is shut down when the caller's block ends, on every exit path."""
        pool = held.enter_context(worker_pool(1, "mmembed-jpeg"))
        return self._staged(batches, items, fallback, pool)

    def _staged(self, batches: Iterator[list[tuple[int, Any]]], items: Any, fallback: Callable[[Any, int], Any],
                pool: Executor) -> Iterator[list[tuple[int, Any]]]:
        pending = None
        for batch in batches:
            nxt = pool.submit(self.finish, batch, items, fallback)
            if pending is not None:
                yield pending.result()
            pending = nxt
        if pending is not None:
            yield pending.result()
