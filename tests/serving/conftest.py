"""A real server on 127.0.0.1 (uvicorn in a thread of the test process, so answers can be compared with the
in-process embedders), and the models it serves."""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="pip install 'multimodal-embed[serve]'")
httpx = pytest.importorskip("httpx", reason="pip install httpx")


@contextmanager
def running(app) -> Iterator[str]:
    """Serve ``app`` on a free loopback port; yields its base URL once /health answers 200."""
    import uvicorn

    from multimodal_embed.serving.connections import uvicorn_config

    server = uvicorn.Server(uvicorn_config(app, "127.0.0.1", 0, log_level="warning"))  # as mmembed serve runs it
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    while httpx.get(f"{url}/health").status_code != 200:
        if time.monotonic() > deadline:
            raise RuntimeError("the server did not become healthy")
        time.sleep(0.05)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(30)


def data_uri(path: Path | bytes, mime: str = "image/jpeg") -> str:
    raw = path if isinstance(path, bytes) else Path(path).read_bytes()
    return f"data:{mime};base64," + base64.b64encode(raw).decode()


def png_bytes(seed: int, size: int = 40) -> bytes:
    from PIL import Image

    arr = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def nomic(fixtures_dir):
    from multimodal_embed import Embedder

    emb = Embedder.from_pretrained(text=str(fixtures_dir / "text-v1.5-tiny"),
                                   vision=str(fixtures_dir / "vision-v1.5-tiny"), device="cpu")
    # The tiny checkpoint is 64 wide, so nomic's trained sizes (768 ... 64) leave only 64: let 32 stand for a
    # smaller trained size, so that `dimensions` runs the v1.5 recipe (layer norm, cut, L2) for real.
    emb.text_encoder.matryoshka_dims = (64, 32)
    return emb


@pytest.fixture(scope="session")
def builtin():
    from multimodal_embed import Embedder

    return Embedder.from_pretrained("minilm-efficientnet-lite0", device="cpu")


@pytest.fixture(scope="session")
def stamps(data_dir) -> list[Path]:
    return sorted((data_dir / "tuxpaint-stamps").rglob("*.png"))[:12]


@pytest.fixture(scope="session")
def index_path(nomic, stamps, tmp_path_factory) -> Path:
    import shutil

    from multimodal_embed import ImageIndex

    root = tmp_path_factory.mktemp("served-index")
    folder = root / "photos"
    (folder / "a").mkdir(parents=True)
    (folder / "b").mkdir()
    for i, p in enumerate(stamps):
        shutil.copy(p, folder / ("a" if i % 2 else "b") / f"{i:02d}.png")
    path = root / "photos.mmindex"
    with ImageIndex.create(path, nomic) as index:
        index.add_folder(folder, show_progress=False)
    return path
