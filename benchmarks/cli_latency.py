"""Where a cold ``mmembed search`` spends its time, and the same query through a running ``mmembed serve``.

    python benchmarks/cli_latency.py [--images 1000] [--runs 5] [--work /tmp/mmembed-cli-latency]

Builds (once, cached in ``--work``) a folder of ``--images`` JPEGs cut from the package's sample photos and an
index of it with the built-in model (minilm-efficientnet-lite0), then measures, each ``--runs`` times:

* a cold CLI text query, ``mmembed search INDEX "a frog"`` in a new process (wall clock, median);
* the same steps in a new process, timed stage by stage: imports (the CLI, the index module with torch and
  numpy), index open (schema check), weight loading (the text tower and what it imports), the query (text
  embedding and exact top-k over the index's vectors, read from SQLite on first use), and the rest of the
  process's wall time (interpreter start and exit: freeing torch and the model at exit is most of it);
* a ``POST /v1/search`` to ``mmembed serve --index INDEX`` (warm server, same machine), and a cold
  ``mmembed search --server URL "a frog"`` process.

Prints a Markdown table and the CPU (``lscpu``, ``torch.backends.cpu.get_cpu_capability()``) and load average.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from serve_throughput import free_port, start  # a sibling script: benchmarks/ is sys.path[0]

ROOT = Path(__file__).resolve().parents[1]
GALLERY = ROOT / "multimodal_embed" / "demo_assets"
MODEL = "minilm-efficientnet-lite0"
QUERY = "a frog"

STAGES = r"""
import time, sys, json
t = {"start": time.perf_counter()}
import multimodal_embed.cli  # the CLI module (argparse, the package's light modules)
from multimodal_embed.index import ImageIndex  # numpy, torch (through utils)
t["imports"] = time.perf_counter()
index = ImageIndex.open(sys.argv[1])
t["index open"] = time.perf_counter()
if hasattr(index, "_text_model"):
    index._text_model()  # what the first text query loads: the text tower (and what it imports)
else:  # a version before it (--baseline): the whole model, as index.embedder loads it
    from multimodal_embed.embedder import Embedder
    index._embedder = Embedder.from_identity(index.identity)
t["weight loading"] = time.perf_counter()
hits = index.search(sys.argv[2], k=5)
t["query"] = time.perf_counter()
print(json.dumps({"t": t, "first": hits[0].path}))
"""


def _env(package_root: Path = ROOT) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMEMBED_")}
    env.update(PYTHONPATH=str(package_root), HF_HUB_OFFLINE="1")
    return env


def make_images(folder: Path, n: int, seed: int = 0) -> None:
    """``n`` distinct JPEGs: random crops, flips and sizes of the sample photos."""
    from PIL import Image, ImageOps

    folder.mkdir(parents=True, exist_ok=True)
    photos = sorted(GALLERY.glob("*.jpg"))
    rng = random.Random(seed)
    for i in range(n):
        out = folder / f"{i:05d}.jpg"
        if out.exists():
            continue
        with Image.open(photos[i % len(photos)]) as im:
            im = im.convert("RGB")
            w, h = im.size
            cw, ch = int(w * rng.uniform(0.5, 1.0)), int(h * rng.uniform(0.5, 1.0))
            x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
            crop = im.crop((x, y, x + cw, y + ch))
            if rng.random() < 0.5:
                crop = ImageOps.mirror(crop)
            side = rng.randint(192, 400)
            crop.thumbnail((side, side))
            crop.save(out, quality=85)


def build_index(work: Path, n: int) -> Path:
    folder, index = work / f"images-{n}", work / f"images-{n}.mmindex"
    make_images(folder, n)
    if not index.exists():
        subprocess.run([sys.executable, "-m", "multimodal_embed.cli", "index", "--model", MODEL, str(index),
                        str(folder), "-q"], check=True, env=_env())
    return index


def _timed(cmd: list[str], package_root: Path = ROOT) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=_env(package_root),
                         cwd=package_root).stdout  # python -m puts the working folder first on the path
    return time.perf_counter() - t0, out


def measure(index: Path, runs: int, baseline: Path | None = None) -> dict[str, list[float]]:
    cli = [sys.executable, "-m", "multimodal_embed.cli"]
    res: dict[str, list[float]] = {}
    for root, label in ([(baseline, "baseline: ")] if baseline else []) + [(ROOT, "")]:
        for _ in range(runs):
            wall, out = _timed([*cli, "search", str(index), QUERY, "-k", "5"], root)
            res.setdefault(f"{label}cold CLI query (wall)", []).append(wall)
            wall, out = _timed([sys.executable, "-c", STAGES, str(index), QUERY], root)
            t = json.loads(out)["t"]
            steps = list(t)
            res.setdefault(f"{label}interpreter start + exit", []).append(wall - (t[steps[-1]] - t["start"]))
            for prev, step in itertools.pairwise(steps):
                res.setdefault(f"{label}{step}", []).append(t[step] - t[prev])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start([*cli, "serve", "--index", str(index), "--port", str(port)], url + "/health", env=_env())
    try:
        body = json.dumps({"query": QUERY, "top_k": 5}).encode()
        for i in range(runs + 1):
            req = urllib.request.Request(url + "/v1/search", data=body, headers={"Content-Type": "application/json"})
            t0 = time.perf_counter()
            with urllib.request.urlopen(req, timeout=60) as r:
                r.read()
            if i:  # the first request warms the server's caches (index vectors)
                res.setdefault("POST /v1/search (warm server)", []).append(time.perf_counter() - t0)
        for _ in range(runs):
            wall, _ = _timed([*cli, "search", "--server", url, QUERY, "-k", "5"])
            res.setdefault("cold CLI query --server (wall)", []).append(wall)
    finally:
        server.terminate()
        server.wait(timeout=60)
    return res


def cpu() -> str:
    import torch

    name = next((line.split(":", 1)[1].strip() for line in subprocess.run(
        ["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines() if line.startswith("Model name")), "?")
    return (f"{name}, {os.cpu_count()} CPUs, torch {torch.__version__} capability "
            f"{torch.backends.cpu.get_cpu_capability()}, load average {os.getloadavg()[0]:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--work", default="/tmp/mmembed-cli-latency")
    parser.add_argument("--baseline", type=Path, help="a folder holding another version's multimodal_embed/ "
                                                     "(e.g. `git archive COMMIT multimodal_embed | tar -x -C DIR`): "
                                                     "its cold CLI query is timed first, in the same run")
    args = parser.parse_args()
    work = Path(args.work)
    index = build_index(work, args.images)
    print(f"CPU: {cpu()}")
    res = measure(index, args.runs, args.baseline)
    print(f"\n{args.images}-image index, built-in model, query {QUERY!r}, median of {args.runs} (min-max)\n")
    print("| step | seconds |\n|---|---|")
    for step, values in res.items():
        print(f"| {step} | {statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f}) |")
    print(f"\nCPU after: load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
