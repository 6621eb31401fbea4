"""Issue 14 (inputs half): hostile images, URLs, texts, configs and checkpoints give the package's own errors,
per item where the call collects errors, and bounded work."""

from __future__ import annotations

import http.server
import io
import json
import shutil
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from multimodal_embed import ImageDecodeError
from multimodal_embed.errors import CheckpointError, ConfigError, InputTypeError, InvalidInputError
from multimodal_embed.images import ImagePreprocessor, load_image, read_url, source_kind

REPO = Path(__file__).resolve().parents[1]


def _png(size: tuple[int, int], color=(200, 30, 60)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def _dds_unknown_fourcc() -> bytes:
    """A DDS header with a pixel format Pillow's plugin does not implement (it raises NotImplementedError)."""
    header = struct.pack("<7I", 124, 0x1 | 0x2 | 0x4 | 0x1000, 4, 4, 0, 0, 0) + b"\0" * 44
    pixel_format = struct.pack("<2I", 32, 0x4) + b"ABCD" + struct.pack("<5I", 0, 0, 0, 0, 0)
    return b"DDS " + header + pixel_format + struct.pack("<5I", 0x1000, 0, 0, 0, 0) + b"\0" * 64


# -- item 2: extreme aspect ratios -------------------------------------------------------------------------------

def test_extreme_aspect_ratio_preprocessing_fits_in_small_memory(tmp_path):
    """A 1x10000 and a 100000x1 PNG preprocess within a 700 MB address-space limit (the full shortest-edge
    resize would need 1.5 GB and 15 GB)."""
    (tmp_path / "tall.png").write_bytes(_png((1, 10000)))
    (tmp_path / "wide.png").write_bytes(_png((100000, 1)))
    script = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (700 * 2**20, 700 * 2**20))
        from multimodal_embed.images import ImagePreprocessor, load_image
        pre = ImagePreprocessor.from_dict({{"size": {{"shortest_edge": 224}}, "crop_size": 224}})
        for name in ("tall.png", "wide.png"):
            x = pre(load_image({str(tmp_path)!r} + "/" + name))
            assert x.shape == (3, 224, 224), x.shape
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


@pytest.mark.parametrize("shape", [(2000, 1), (1, 3000), (7000, 300), (97, 5003), (3001, 13), (150, 4000)])
@pytest.mark.parametrize("resample", [3, 2])
def test_crop_first_resize_matches_full_resize(monkeypatch, shape, resample):
    from multimodal_embed import images

    monkeypatch.setattr(images, "MAX_RESIZE_PIXELS", 10**12)
    pre = ImagePreprocessor.from_dict({"size": {"shortest_edge": 224}, "crop_size": 224, "resample": resample})
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8))
    bounded = pre.to_uint8(img)
    monkeypatch.setattr(images, "CROP_FIRST_FACTOR", 10**12)
    full = pre.to_uint8(img)
    diff = np.abs(bounded.astype(int) - full.astype(int))
    assert bounded.shape == full.shape == (3, 224, 224)
    assert diff.max() <= 1 and (diff > 0).mean() < 0.002


def test_resize_without_crop_refuses_explosive_sizes():
    pre = ImagePreprocessor.from_dict({"size": {"shortest_edge": 224}, "do_center_crop": False})
    with pytest.raises(ValueError, match="aspect ratio"):
        pre.to_uint8(Image.new("RGB", (1, 400000)))


@pytest.fixture(scope="module")
def tiny_vision(fixtures_dir):
    from multimodal_embed import Embedder

    return Embedder.from_pretrained(vision=str(fixtures_dir / "vision-v1.5-tiny"))


def test_bad_items_are_per_item_errors_and_good_ones_survive(tiny_vision):
    good = _png((64, 48))
    items = [good, np.zeros((0, 0, 3), np.uint8), Image.new("RGB", (0, 10)), _png((1, 10000)),
             _dds_unknown_fourcc(), np.full((20, 30, 3), 7, np.uint8), _png((100000, 1)), None]
    res = tiny_vision.embed_images_with_errors(items, batch_size=3)
    failed = {f.index: f for f in res.failures}
    assert sorted(failed) == [1, 2, 4, 7], res.failures
    assert res.indices == [0, 3, 5, 6]
    assert "0x0" in failed[1].reason and "0x10" in failed[2].reason
    assert "NotImplementedError" in failed[4].reason and "#4" in failed[4].item
    np.testing.assert_allclose(res.vectors[0], tiny_vision.embed_images([good])[0], atol=1e-5)
    with pytest.raises(ImageDecodeError, match="#1"):
        tiny_vision.embed_images(items[:2])


def test_memory_error_in_preprocessing_is_per_item():
    """A real MemoryError (numpy refusing an impossible allocation) in one item's preprocessing."""
    import torch

    from multimodal_embed.vision import ImageEncoder

    class NaiveEncoder(ImageEncoder):
        max_aspect_ratio = None

        def __init__(self):
            super().__init__()
            self.model = torch.nn.Linear(3, 3)
            self.dim = 3

        def preprocess(self, img):
            w, h = img.size
            scale = 2**20 if min(w, h) == 1 else 1  # upscales the short side, like a naive resize
            buf = np.empty((h * scale, w * scale, 3), np.uint8)
            return np.asarray(img, np.float32).mean(axis=(0, 1)) + 0 * buf.size

        def forward(self, batch):
            return self.model(batch)

    enc = NaiveEncoder()
    vectors, indices, failures = enc.encode([_png((8, 8)), _png((1, 500)), _png((9, 9))], on_error="collect")
    assert indices == [0, 2] and vectors.shape == (2, 3)
    assert len(failures) == 1 and failures[0].index == 1 and "MemoryError" in failures[0].reason
    with pytest.raises(ImageDecodeError, match="#1"):
        enc.encode([_png((8, 8)), _png((1, 500))])


def test_generic_encoders_refuse_beyond_stated_aspect_ratio():
    from multimodal_embed.vision import MAX_ASPECT_RATIO, ImageEncoder

    enc = ImageEncoder()
    with pytest.raises(ImageDecodeError, match="aspect ratio"):
        enc.prepare(_png((1, int(MAX_ASPECT_RATIO) + 1)), 0)


# -- item 13: raw errors from bad items ----------------------------------------------------------------------------

@pytest.mark.parametrize("item, match", [
    (np.zeros((0, 0, 3), np.uint8), "empty image"),
    (np.zeros((5, 0), np.uint8), "empty image"),
    (Image.new("RGB", (0, 10)), "empty image"),
    (_dds_unknown_fourcc(), "NotImplementedError"),
])
def test_bad_items_raise_image_decode_error(item, match):
    with pytest.raises(ImageDecodeError, match=match):
        load_image(item)


def test_text_items_are_checked(fixtures_dir):
    from multimodal_embed import Embedder
    from multimodal_embed.text import check_texts

    with pytest.raises(InvalidInputError, match=r"texts\[1\].*surrogate"):
        check_texts(["fine", "bad \ud800"])
    with pytest.raises(InputTypeError, match="NoneType"):
        check_texts(None)
    with pytest.raises(InputTypeError, match=r"texts\[0\] is int"):
        check_texts([3])
    assert check_texts(["déjà vu", "😀", ""]) == ["déjà vu", "😀", ""]
    emb = Embedder.from_pretrained(text=str(fixtures_dir / "text-v1.5-tiny"))
    with pytest.raises(InvalidInputError, match=r"texts\[1\]"):
        emb.embed_text(["ok", "bad \ud800"])
    with pytest.raises(InputTypeError):
        emb.embed_text(None)


# -- items 5, 6, 14: URLs --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, kind", [
    ("http://example.com/a.png", "url"), ("HTTPS://EXAMPLE.COM/A.PNG", "url"), ("HtTp://x/y", "url"),
    ("photos/red.png", "path"), ("/abs/path.jpg", "path"), ("C:\\pics\\a.png", "path"), ("red", "path"),
])
def test_source_kind(text, kind):
    assert source_kind(text) == kind


@pytest.mark.parametrize("text", ["file:///etc/passwd", "FTP://host/x.png", "gopher://h/x", "data://x"])
def test_other_schemes_refused(text):
    with pytest.raises(InvalidInputError, match="scheme"):
        source_kind(text)
    with pytest.raises(ImageDecodeError, match="scheme"):
        load_image(text)


def test_file_url_is_not_read_as_a_path(tmp_path):
    (tmp_path / "img.png").write_bytes(_png((4, 4)))
    with pytest.raises(ImageDecodeError, match="scheme 'file'"):
        load_image(f"file://{tmp_path}/img.png")


class _Handler(http.server.BaseHTTPRequestHandler):
    png = _png((16, 12))

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path == "/img.png":
            self._send(self.png)
        elif self.path == "/to-img":
            self._redirect("/img.png")
        elif self.path == "/to-file":
            self._redirect("file:///etc/passwd")
        elif self.path == "/to-ftp":
            self._redirect("ftp://127.0.0.1/x.png")
        elif self.path == "/loop":
            self._redirect("/loop")
        elif self.path == "/drip":  # 1 byte every 0.25 s: each read is quick, the whole never ends in time
            self.send_response(200)
            self.send_header("Content-Length", str(len(self.png)))
            self.end_headers()
            for b in self.png:
                self.wfile.write(bytes([b]))
                self.wfile.flush()
                time.sleep(0.25)
        elif self.path == "/big":
            self.send_response(200)
            self.end_headers()
            for _ in range(64):
                self.wfile.write(b"\0" * 65536)
        else:
            self.send_error(404)

    def _send(self, body):
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, where):
        self.send_response(302)
        self.send_header("Location", where)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture(scope="module")
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_url_fetch_works_any_case_and_follows_http_redirects(server):
    assert load_image(server + "/img.png").size == (16, 12)
    assert load_image(server.upper() + "/img.png").size == (16, 12)
    assert load_image(server + "/to-img").size == (16, 12)
    with pytest.raises(ImageDecodeError, match="allow_urls"):
        load_image(server + "/img.png", allow_urls=False)


@pytest.mark.parametrize("path, match", [("/to-file", "(?i)redirect"), ("/to-ftp", "(?i)redirect"),
                                         ("/loop", "redirect|loop"), ("/missing", "404")])
def test_url_redirects_limited_to_http(server, path, match):
    with pytest.raises(ImageDecodeError, match=match):
        load_image(server + path)


def test_url_size_cap(server):
    with pytest.raises(ImageDecodeError, match="byte limit"):
        load_image(server + "/big", url_max_bytes=1 << 20)


def test_url_overall_deadline_against_a_dripping_server(server):
    start = time.monotonic()
    with pytest.raises(ImageDecodeError, match="longer than 1"):
        load_image(server + "/drip", url_timeout=1.0)
    assert time.monotonic() - start < 3.0


def test_url_deadline_covers_slow_headers():
    """A server that accepts and then sends its status line one byte at a time."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def drip():
        conn, _ = listener.accept()
        try:
            for b in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 200:
                conn.sendall(bytes([b]))
                time.sleep(0.2)
        except OSError:
            pass
        finally:
            conn.close()

    threading.Thread(target=drip, daemon=True).start()
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        read_url(f"http://127.0.0.1:{listener.getsockname()[1]}/x", timeout=1.0)
    assert time.monotonic() - start < 3.0
    listener.close()


# -- item 12: configs and checkpoints ---------------------------------------------------------------------------------

@pytest.mark.parametrize("change, field", [
    ({"n_embd": 16384}, "n_embd"), ({"img_size": 1.6e6}, "img_size"), ({"n_head": 0}, "n_head"),
    ({"n_embd": 100, "n_head": 3}, "n_embd"), ({"patch_size": 0}, "patch_size"), ({"n_layer": -1}, "n_layer"),
    ({"n_inner": "lots"}, "n_inner"), ({"img_size": 8192, "patch_size": 8}, "img_size"),
    ({"n_embd": 4096, "n_layer": 200}, "parameters"),
])
def test_vision_config_validated_before_allocation(fixtures_dir, change, field):
    from multimodal_embed.models.nomic_vision import NomicVisionConfig

    raw = json.loads((fixtures_dir / "vision-v1.5-tiny" / "config.json").read_text())
    with pytest.raises(ConfigError, match=field):
        NomicVisionConfig.from_hf_dict({**raw, **change})


@pytest.mark.parametrize("change, field", [
    ({"n_embd": 1 << 20}, "n_embd"), ({"n_head": 0}, "n_head"), ({"n_embd": 100, "n_head": 3}, "n_embd"),
    ({"vocab_size": 1e12}, "vocab_size"), ({"n_layer": 0}, "n_layer"), ({"n_positions": float("inf")}, "n_positions"),
])
def test_text_config_validated_before_allocation(fixtures_dir, change, field):
    from multimodal_embed.models.nomic_bert import NomicBertConfig

    raw = json.loads((fixtures_dir / "text-v1.5-tiny" / "config.json").read_text())
    with pytest.raises(ConfigError, match=field):
        NomicBertConfig.from_hf_dict({**raw, **change})


def test_native_text_config_validated():
    from multimodal_embed.models.nomic_bert import NomicBertConfig

    with pytest.raises(ConfigError, match="num_attention_heads"):
        NomicBertConfig.from_hf_dict({"model_type": "nomic_bert", "hidden_size": 64, "num_attention_heads": 0})


def test_tampered_config_folder_fails_fast(fixtures_dir, tmp_path):
    from multimodal_embed import Embedder

    folder = tmp_path / "vision"
    shutil.copytree(fixtures_dir / "vision-v1.5-tiny", folder)
    raw = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**raw, "n_embd": 16384}))
    with pytest.raises(ConfigError, match="n_embd"):
        Embedder.from_pretrained(vision=str(folder))


@pytest.mark.parametrize("damage", ["truncate", "header", "garbage"])
def test_tampered_safetensors_is_checkpoint_error(fixtures_dir, tmp_path, damage):
    from multimodal_embed.utils import load_safetensors

    folder = tmp_path / "vision"
    shutil.copytree(fixtures_dir / "vision-v1.5-tiny", folder)
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "header":
        data[10:20] = b"\xff" * 10
    else:
        data = bytearray(b"not a checkpoint")
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_safetensors(folder)


def test_sharded_index_cannot_point_outside_the_folder(tmp_path):
    from multimodal_embed.utils import load_safetensors

    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "../elsewhere.safetensors"}}))
    with pytest.raises(CheckpointError, match="elsewhere"):
        load_safetensors(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="index"):
        load_safetensors(tmp_path)


@pytest.mark.parametrize("cfg, key", [({"size": {"shortest_edge": 10**7}, "crop_size": 224}, "size.shortest_edge"),
                                      ({"size": {"height": 0, "width": 224}}, "size.height"),
                                      ({"size": 224, "crop_size": {"height": "x", "width": 2}}, "crop_size.height")])
def test_preprocessor_config_sizes_validated(cfg, key):
    with pytest.raises(ConfigError, match=key):
        ImagePreprocessor.from_dict(cfg)


def test_aligned_trunk_weights_damaged_is_checkpoint_error(tmp_path):
    from multimodal_embed.models.aligned import load_classifier

    path = tmp_path / "trunk.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{broken")
    with pytest.raises(CheckpointError, match="trunk.safetensors"):
        load_classifier(str(path))
