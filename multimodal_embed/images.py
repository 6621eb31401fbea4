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

import io
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image, ImageOps

from .errors import ConfigError, ImageDecodeError

ImageInput = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray, Any]  # noqa: UP007

logger = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
URL_TIMEOUT_S = 20.0
URL_MAX_BYTES = 50 * 1024 * 1024
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


def _read_url(url: str, timeout: float, max_bytes: int) -> bytes:
    import urllib.request

    req = urllib.request.Request(url, headers={"User-Agent": "multimodal-embed"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        length = resp.headers.get("Content-Length")
        if length is not None and int(length) > max_bytes:
            raise ValueError(f"remote file is {int(length)} bytes, over the {max_bytes}-byte limit")
        data = resp.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"remote file is over the {max_bytes}-byte limit")
    return data


def _open(item: ImageInput, *, timeout: float, max_bytes: int) -> Image.Image:
    if isinstance(item, Image.Image):
        return item
    if isinstance(item, np.ndarray):
        arr = item
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
            raise ValueError(f"numpy images must be HxW or HxWxC (C = 1, 3 or 4) uint8 arrays, got "
                             f"{arr.dtype} {arr.shape}")
        return Image.fromarray(np.ascontiguousarray(arr))
    if isinstance(item, (bytes, bytearray, memoryview)):
        return Image.open(io.BytesIO(bytes(item)))
    if isinstance(item, (str, os.PathLike)):
        text = os.fspath(item)
        if isinstance(text, str) and text.startswith(("http://", "https://")):
            return Image.open(io.BytesIO(_read_url(text, timeout, max_bytes)))
        if isinstance(text, str) and "://" in text.split("/", 1)[0] + "/":
            raise ValueError("only http(s) URLs and local paths are supported")
        return Image.open(os.path.expanduser(text))
    if hasattr(item, "read"):
        return Image.open(io.BytesIO(item.read()))
    raise TypeError(f"unsupported image input type {type(item).__name__} (use a path, URL, bytes, a binary file, "
                    f"a PIL image or a uint8 numpy array)")


def _to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """Scale a high-bit-depth or float single-channel array to 0..255."""
    arr = arr.astype(np.float64)
    if mode.startswith("I;16"):
        arr = arr / 257.0
    elif mode == "F" and arr.size and np.nanmin(arr) >= 0 and np.nanmax(arr) <= 1.0:
        arr = arr * 255.0
    elif arr.size and np.nanmax(arr) > 255:
        hi = 65535.0 if np.nanmax(arr) <= 65535 and np.nanmin(arr) >= 0 else None
        if hi is not None:
            arr = arr / 257.0
        else:
            lo, top = np.nanmin(arr), np.nanmax(arr)
            arr = (arr - lo) * (255.0 / max(top - lo, 1e-12))
    return np.clip(np.nan_to_num(arr), 0, 255).round().astype(np.uint8)


def _white(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparency composited on white."""
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        return Image.fromarray(_to_uint8(np.asarray(img), mode), "L").convert("RGB")
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
) -> Image.Image:
    """Decode one image input to an 8-bit RGB PIL image, or raise :class:`ImageDecodeError`.

    ``max_pixels`` is the decompression-bomb limit (``None`` disables it; not recommended for untrusted files).
    ``draft=(w, h)`` lets a JPEG decode at 1/2, 1/4 or 1/8 scale (DCT scaling) while staying at least ``w x h``;
    other formats ignore it.
    """
    label = name or describe(item)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = _open(item, timeout=url_timeout, max_bytes=url_max_bytes)
            w, h = img.size
            if max_pixels is not None and w * h > max_pixels:
                raise ValueError(f"{w}x{h} = {w * h} pixels is over the decompression-bomb limit of {max_pixels} "
                                 f"(raise max_pixels if the file is trusted)")
            if getattr(img, "is_animated", False) and img.format != "PSD":
                img.seek(0)  # first frame (a PSD opens at its first layer, and seek(0) would fail there)
            if draft is not None and img.format == "JPEG" and img.mode in ("RGB", "L"):
                img.draft(img.mode, draft)
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
    except (OSError, SyntaxError, ValueError, TypeError, EOFError, MemoryError, KeyError, IndexError) as exc:
        reason = str(exc) or type(exc).__name__
        if "truncated" in reason.lower():
            reason = f"truncated file ({reason})"
        raise ImageDecodeError(label, reason) from None


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
        if not ({"height", "width"} <= size.keys() or "shortest_edge" in size):
            raise ConfigError(f"unsupported preprocessing size {size}")
        crop = cfg.get("crop_size")
        if isinstance(crop, int):
            crop = {"height": crop, "width": crop}
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
        cfg = json.loads(path.read_text()) if path.is_file() else {}
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

    def resize(self, img: Image.Image) -> Image.Image:
        if "height" in self.size:
            new_h, new_w = self.size["height"], self.size["width"]
        else:
            w, h = img.size
            short, long = (w, h) if w <= h else (h, w)
            edge = self.size["shortest_edge"]
            new_short, new_long = edge, int(edge * long / short)
            new_h, new_w = (new_long, new_short) if w <= h else (new_short, new_long)
        if (new_w, new_h) == img.size:
            return img
        return img.resize((new_w, new_h), resample=self.resample)

    def to_uint8(self, img: Image.Image) -> np.ndarray:
        """Resize and crop: an 8-bit RGB image to a ``(3, H, W)`` uint8 array (the integer half of the work)."""
        if self.do_resize:
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
