"""Ray (2 actors) vs single-process embed_images on 1000 real images, same machine, same model.

    python benchmarks/ray_throughput.py [--n 1000] [--model minilm-efficientnet-lite0] [--shard-rows 50]

The images are Tux Paint stamps from ../shared/data (copied to a temporary folder, repeated up to --n).
Per-shard overhead = (Ray wall x actors - single-process wall) / shards: the extra actor time per shard
(model load per actor, scheduling, Parquet writing).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--model", default="minilm-efficientnet-lite0")
    ap.add_argument("--shard-rows", type=int, default=50)
    ap.add_argument("--actors", type=int, default=2)
    args = ap.parse_args()
    import ray

    from multimodal_embed import Embedder
    from multimodal_embed.distributed import embed_dataset, read_shards

    tmp = Path(tempfile.mkdtemp())
    stamps = sorted((DATA / "tuxpaint-stamps").rglob("*.png"))
    folder = tmp / "images"
    folder.mkdir()
    for i in range(args.n):
        shutil.copy(stamps[i % len(stamps)], folder / f"{i:05d}.png")
    paths = sorted(str(p) for p in folder.iterdir())

    t0 = time.perf_counter()
    emb = Embedder.from_pretrained(args.model)
    single = emb.embed_images(paths, show_progress=False)
    t_single = time.perf_counter() - t0

    ray.init(num_cpus=args.actors, include_dashboard=False, log_to_driver=False)
    t0 = time.perf_counter()
    report = embed_dataset(folder, tmp / "out", model=args.model, num_actors=args.actors,
                           shard_rows=args.shard_rows)
    t_ray = time.perf_counter() - t0
    _, table = read_shards(tmp / "out")
    got = np.array(table.column("vector").to_pylist(), np.float32)
    shards = report.shards_total
    print(json.dumps({
        "images": args.n, "model": args.model, "actors": args.actors, "shards": shards,
        "single_process_s (incl. model load)": round(t_single, 1), "ray_s (incl. start, model loads)": round(t_ray, 1),
        "single_images_per_s": round(args.n / t_single, 1), "ray_images_per_s": round(args.n / t_ray, 1),
        "ray/single throughput": round(t_single / t_ray, 2),
        "overhead_per_shard_s": round((t_ray * args.actors - t_single) / shards, 3),
        "max_abs_diff": float(np.abs(got - single).max()),
    }, indent=2))
    ray.shutdown()
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
