"""``ImageIndex.duplicates`` grouping: the chunked, vectorised union vs the old per-pair Python loop.

    python benchmarks/duplicates.py [--sizes 2000 4000 8000] [--dim 384] [--baseline-max 4000]

Near-identical unit vectors (the worst case: every pair is an edge). The baseline (the previous implementation,
copied here) runs in the same process on the same data, up to ``--baseline-max`` rows; the script prints seconds,
the ratio and peak extra memory (tracemalloc) for each size, with the CPU model and torch's CPU capability.
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from multimodal_embed.index.search import duplicate_groups
from multimodal_embed.precision import cpu_capability


def baseline_groups(paths: list[str], mat: np.ndarray, threshold: float) -> list[list[str]]:
    """The implementation before issue 14: union-find over every pair above the threshold, in Python."""
    parent = list(range(len(paths)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for start in range(0, len(paths), 4096):
        sims = mat[start:start + 4096] @ mat.T
        rows, cols = np.nonzero(sims >= threshold)
        for a, b in zip(rows + start, cols):
            if a < b:
                parent[find(a)] = find(b)
    groups: dict[int, list[str]] = {}
    for i, p in enumerate(paths):
        groups.setdefault(find(i), []).append(p)
    return sorted((sorted(g) for g in groups.values() if len(g) > 1), key=lambda g: g[0])


def measure(fn, *args, memory: bool = True) -> tuple[float, float, object]:
    """Seconds (an untraced run), and peak traced MiB from a second, traced run (tracemalloc slows Python
    loops a lot, so it is never timed)."""
    t0 = time.perf_counter()
    out = fn(*args)
    seconds = time.perf_counter() - t0
    peak = float("nan")
    if memory:
        tracemalloc.start()
        fn(*args)
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    return seconds, peak, out



def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 4000, 8000])
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--baseline-max", type=int, default=4000)
    args = ap.parse_args()
    try:
        import torch

        capability = torch.backends.cpu.get_cpu_capability()
    except ImportError:
        capability = "n/a (torch not installed)"
    print(f"cpu: {cpu_capability().model}; torch cpu capability: {capability}; numpy {np.__version__}")
    rng = np.random.default_rng(0)
    for n in args.sizes:
        mat = rng.standard_normal(args.dim).astype(np.float32) + 0.01 * rng.standard_normal(
            (n, args.dim)).astype(np.float32)
        mat /= np.linalg.norm(mat, axis=1, keepdims=True)
        paths = [f"{i:06d}.jpg" for i in range(n)]
        t_new, m_new, g_new = measure(duplicate_groups, paths, mat, 0.95)
        line = f"n={n}: vectorised {t_new:.2f} s, peak {m_new:.0f} MiB"
        if n <= args.baseline_max:
            t_old, _, g_old = measure(baseline_groups, paths, mat, 0.95, memory=False)
            assert g_old == g_new, "the two implementations disagree"
            line += f"; baseline {t_old:.2f} s; speed-up x{t_old / t_new:.1f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
