"""Search latency: exact chunked search vs the memory-bandwidth limit, and FAISS (optional) recall@10.

    python benchmarks/search.py [--sizes 100000 1000000] [--dim 768] [--faiss]

Random unit vectors (float32). Exact search streams the whole matrix once per query batch, so its floor is
``matrix bytes / memory bandwidth``; the script measures the bandwidth with a large copy in the same process.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from multimodal_embed.index import exact_search


def bandwidth() -> float:
    a = np.ones(1 << 28 >> 2, dtype=np.float32)  # 256 MiB
    b = np.empty_like(a)
    best = 1e9
    for _ in range(5):
        t0 = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - t0)
    return 2 * a.nbytes / best  # read + write


def timed(fn, repeat=5):
    best = 1e9
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--faiss", action="store_true")
    ap.add_argument("--clustered", action="store_true",
                    help="vectors drawn around 2000 centres (like real embeddings) instead of uniform on the sphere")
    args = ap.parse_args()
    bw = bandwidth()
    print(f"measured copy bandwidth: {bw / 1e9:.1f} GB/s")
    rng = np.random.default_rng(0)
    for n in args.sizes:
        mat = rng.standard_normal((n, args.dim), dtype=np.float32)
        if args.clustered:
            centres = rng.standard_normal((2000, args.dim), dtype=np.float32)
            mat *= 0.7
            mat += centres[rng.integers(0, 2000, n)]
        mat /= np.linalg.norm(mat, axis=1, keepdims=True)
        floor = mat.nbytes / bw
        print(f"\nn = {n:,} x {args.dim} ({mat.nbytes / 2**30:.2f} GiB); bandwidth floor {floor * 1000:.1f} ms/pass")
        for m in (1, 64):
            q = rng.standard_normal((m, args.dim), dtype=np.float32)
            q /= np.linalg.norm(q, axis=1, keepdims=True)
            t, _ = timed(lambda q=q, mat=mat: exact_search(mat, q, 10), repeat=3)
            print(f"  exact, {m:2d} queries: {t * 1000:8.1f} ms  ({mat.nbytes / t / 1e9:5.1f} GB/s effective, "
                  f"{t / floor:.2f}x the floor)")
        if args.faiss:
            try:
                import faiss
            except ImportError:
                print("  faiss not installed (pip install multimodal-embed[ann])")
                continue
            nlist = int(4 * np.sqrt(n))
            t0 = time.perf_counter()
            quant = faiss.IndexFlatIP(args.dim)
            ivf = faiss.IndexIVFFlat(quant, args.dim, nlist, faiss.METRIC_INNER_PRODUCT)
            ivf.train(mat[rng.choice(n, min(n, 40 * nlist), replace=False)])
            ivf.add(mat)
            print(f"  IVF-Flat nlist={nlist} build {time.perf_counter() - t0:.1f} s")
            # queries near indexed items (a realistic workload: a photo and its near-duplicate / caption)
            idx = rng.choice(n, 200, replace=False)
            q = mat[idx] + 0.5 * rng.standard_normal((200, args.dim), dtype=np.float32) / np.sqrt(args.dim)
            q /= np.linalg.norm(q, axis=1, keepdims=True)
            _, truth = exact_search(mat, q, 10)
            t_exact, _ = timed(lambda q=q, mat=mat: exact_search(mat, q[:1], 10), repeat=3)
            for nprobe in (8, 32, 128):
                ivf.nprobe = nprobe
                t, _ = timed(lambda q=q, ivf=ivf: ivf.search(q[:1], 10), repeat=5)
                _, got = ivf.search(q, 10)
                recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, truth)])
                print(f"  IVF nprobe={nprobe:3d}: 1 query {t * 1000:7.2f} ms ({t_exact / t:5.1f}x faster than "
                      f"exact), recall@10 {recall:.3f}")


if __name__ == "__main__":
    main()
