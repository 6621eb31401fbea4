"""`mmembed map` at scale: wall time, CPU time and peak RSS of layout, clusters, naming and HTML, and naming quality.

    python benchmarks/map_scale.py [--cifar ../shared/data/cifar10-test] [--sizes 10000 100000] [--json out.json]

1. Real embeddings: the built-in model (minilm-efficientnet-lite0) on the CIFAR-10 test images (10,000 32x32 JPEGs,
   ``../shared``; ``--per-class N``: the first N of each class; vectors cached in --out). Their map (UMAP, HDBSCAN,
   names by zero-shot, HTML with thumbnails). Then the page of all 10,000 images (thumbnails of every file; vectors
   of images not embedded: a real vector of their class plus noise), its size, and the page in headless Chromium:
   load, then zoom and screenshot (the "interactive" target: < 2 s).
2. Naming quality on the same map: clusters named by zero-shot over the 10 CIFAR-10 class names (``vocabulary=None``)
   and over the 1,000 ImageNet names plus those 10 (the default vocabulary); for each named cluster its majority
   true class; the share of images in named clusters whose cluster's name equals its majority class (target >= 80%),
   the share of images in named clusters (coverage) and the purity of the clusters.
3. Synthetic points with real structure: each of N points is a real CIFAR-10 vector plus Gaussian noise of the
   within-class spread (renormalised), so the clusters are the real ones, blurred; 100k points through the same
   stages (no thumbnails: there are no files).

The baseline, in the same process: the PCA layout of the same points (the fallback without umap-learn); the UMAP
layout is printed as a ratio to it. Peak RSS is the process's high-water mark after each stage (ru_maxrss), so it
only grows. Prints the CPU and torch's capability; the machine may be shared (say so beside the numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CIFAR = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Stage:
    """Wall and CPU seconds of a block, and the peak RSS after it."""

    def __init__(self, log: dict, name: str):
        self.log, self.name = log, name

    def __enter__(self):
        self.t, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        wall, cpu = time.perf_counter() - self.t, time.process_time() - self.c
        self.log[self.name] = {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "peak_rss_mb": round(rss_mb())}
        print(f"  {self.name:<22} {wall:8.1f} s wall {cpu:8.1f} s cpu  peak RSS {rss_mb():7.0f} MB", flush=True)


def cifar_files(root: Path, per_class: int | None = None) -> tuple[list[str], np.ndarray]:
    files = [str(root / c / f) for c in CIFAR for f in sorted(os.listdir(root / c))[:per_class]]
    return files, np.array([CIFAR.index(Path(f).parent.name) for f in files])


def cifar_vectors(emb, root: Path, cache: Path, per_class: int | None) -> tuple[list[str], np.ndarray, np.ndarray]:
    files, y = cifar_files(root, per_class)
    if cache.is_file():
        data = np.load(cache, allow_pickle=False)
        if data["files"].tolist() == files:
            return files, data["vectors"], y
    vectors = emb.embed_images(files, batch_size=64, show_progress=True)
    np.savez(cache, files=np.array(files), vectors=vectors)
    return files, vectors, y


def naming_quality(result, y: np.ndarray) -> dict:
    """Share of images in named clusters whose cluster's name is the cluster's majority class (names outside the
    class list count as wrong), the coverage and the purity."""
    named = [c for c in result.clusters if c.name != "unnamed"]
    in_named = right = pure = 0
    per = []
    for c in named:
        members = y[result.cluster_ids == c.id]
        counts = np.bincount(members, minlength=len(CIFAR))
        major = CIFAR[int(counts.argmax())]
        in_named += len(members)
        pure += int(counts.max())
        right += len(members) if c.name == major else 0
        per.append((c.name, major, len(members), round(float(counts.max() / len(members)), 3), round(c.score, 3)))
    in_clusters = int((result.cluster_ids >= 0).sum())
    return {"clusters": len(result.clusters), "named_clusters": len(named),
            "name_equals_majority_share": round(right / max(in_named, 1), 4),
            "coverage_named": round(in_named / len(y), 4), "coverage_any_cluster": round(in_clusters / len(y), 4),
            "purity_named": round(pure / max(in_named, 1), 4), "clusters_detail": per}


def browser_check(html: Path) -> dict:
    import shutil

    chromium = shutil.which("chromium")
    if not chromium:
        return {"skipped": "no chromium"}
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--headless=new"])
        page = b.new_page(viewport={"width": 1200, "height": 800})
        t = time.perf_counter()
        page.goto(html.as_uri())
        page.wait_for_function("window.mmembedMap !== undefined")
        page.screenshot()
        load = time.perf_counter() - t
        t = time.perf_counter()
        page.evaluate("window.mmembedMap.zoom(4)")
        page.screenshot()
        zoom = time.perf_counter() - t
        t = time.perf_counter()
        page.mouse.move(600, 400)
        page.mouse.wheel(0, -600)
        page.screenshot()
        wheel = time.perf_counter() - t
        b.close()
    return {"load_and_screenshot_s": round(load, 2), "zoom_and_screenshot_s": round(zoom, 2),
            "wheel_zoom_and_screenshot_s": round(wheel, 2)}


def run_map(name: str, source, emb, out: Path, log: dict, *, labels=None, vocabulary=None, thumbnails=True,
            cache_dir=None, seed=0):
    """The stages of ``build_map`` timed one by one (the same calls it makes)."""
    from multimodal_embed.map.build import MapResult, _name
    from multimodal_embed.map.clusters import describe_clusters, find_clusters
    from multimodal_embed.map.html import write_html
    from multimodal_embed.map.layout import layout_2d
    from multimodal_embed.map.thumbs import make_thumbnails

    n = len(source.items)
    print(f"{name}: {n} points", flush=True)
    with Stage(log, "layout_pca_baseline"):
        layout_2d(source.vectors, method="pca")
    with Stage(log, "layout_umap"):
        lay = layout_2d(source.vectors, seed=seed, show_progress=False)
    log["layout_method"] = lay.reason
    log["umap_over_pca_wall"] = round(log["layout_umap"]["wall_s"] / max(log["layout_pca_baseline"]["wall_s"], 1e-3), 1)
    with Stage(log, "clusters_hdbscan"):
        ids = find_clusters(lay.xy)
        clusters = describe_clusters(lay.xy, ids)
    with Stage(log, "naming"):
        naming = _name(source.kind, clusters, ids, source.vectors, source.items, emb, labels, vocabulary, "simple",
                       None, None, cache_dir, seed)
    thumbs, errors = [None] * n, [None] * n
    if thumbnails:
        with Stage(log, "thumbnails"):
            thumbs, errors = make_thumbnails(source.items, seed=seed, show_progress=False)
    result = MapResult(source.kind, source.items, source.ids, lay.xy, ids, clusters, lay.method, lay.reason,
                       np.arange(n), n, thumbs, errors, [], naming, {}, title=name)
    with Stage(log, "html_write"):
        write_html(result, out)
    log["html_mb"] = round(out.stat().st_size / 1e6, 2)
    log["total_wall_s"] = round(sum(v["wall_s"] for k, v in log.items() if isinstance(v, dict) and k not in
                                    ("layout_pca_baseline",)), 1)
    print(f"  html {log['html_mb']} MB; total (without the PCA baseline) {log['total_wall_s']} s", flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cifar", default=str(ROOT.parent / "shared" / "data" / "cifar10-test"))
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000], help="synthetic sizes (default 100000)")
    ap.add_argument("--out", default="/tmp/map_scale")
    ap.add_argument("--per-class", type=int, help="embed only the first N images of each class (default: all "
                                                  "1,000; the 10k page then takes the others' vectors from real ones "
                                                  "of their class plus noise)")
    ap.add_argument("--json")
    args = ap.parse_args()
    import torch

    from multimodal_embed import Embedder
    from multimodal_embed.map.sources import MapSource
    from multimodal_embed.precision import cpu_capability

    cap = cpu_capability()
    report: dict = {"cpu": cap.model, "torch_cpu_capability": str(torch.backends.cpu.get_cpu_capability()),
                    "cores": os.cpu_count(), "load_average_at_start": os.getloadavg()}
    print(json.dumps(report), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    emb = Embedder.from_pretrained("minilm-efficientnet-lite0")
    files, vectors, y = cifar_vectors(emb, Path(args.cifar), out / f"cifar_vectors_{args.per_class}.npz",
                                      args.per_class)
    report["real_embeddings"] = len(files)
    rng = np.random.default_rng(0)
    spread = np.sqrt(np.mean([((vectors[y == c] - vectors[y == c].mean(0)) ** 2).sum(1).mean()
                              for c in range(len(CIFAR))]) / vectors.shape[1])

    def synthetic(classes: np.ndarray) -> np.ndarray:
        """A real vector of each given class plus noise of half the within-class spread, renormalised."""
        pick = np.array([rng.choice(np.flatnonzero(y == c)) for c in classes]) if len(classes) else np.zeros(0, int)
        v = vectors[pick] + rng.normal(size=(len(pick), vectors.shape[1])).astype(np.float32) * spread * 0.5
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    from multimodal_embed.map.build import _name

    log: dict = {}
    real = MapSource("image", files, vectors, name="cifar10-test")
    result = run_map(f"cifar10-test (real embeddings, {len(files)} images)", real, emb, out / "cifar-real.html", log,
                     labels=list(CIFAR), vocabulary=None, cache_dir=str(out / "labels"))
    log["naming_quality_cifar_labels"] = naming_quality(result, y)

    clusters = [type(c)(c.id, c.size, c.x, c.y) for c in result.clusters]
    t = time.perf_counter()
    _name("image", clusters, result.cluster_ids, vectors, files, emb, list(CIFAR), "imagenet", "simple", None, None,
          str(out / "labels"), 0)
    result.clusters = clusters
    log["naming_quality_imagenet_plus_cifar"] = {**naming_quality(result, y),
                                                 "naming_wall_s": round(time.perf_counter() - t, 1)}
    for k in ("naming_quality_cifar_labels", "naming_quality_imagenet_plus_cifar"):
        q = log[k]
        print(f"  {k}: name = majority class for {q['name_equals_majority_share']:.1%} of the images in named "
              f"clusters ({q['named_clusters']}/{q['clusters']} clusters named, covering {q['coverage_named']:.1%} "
              f"of the images; purity {q['purity_named']:.1%})", flush=True)
    report["cifar10_real"] = log

    # the page for all 10k CIFAR-10 images (thumbnails of every file); vectors: real where embedded, else synthetic
    all_files, all_y = cifar_files(Path(args.cifar))
    known = {f: i for i, f in enumerate(files)}
    mat = synthetic(all_y)
    for k, f in enumerate(all_files):
        if f in known:
            mat[k] = vectors[known[f]]
    hlog: dict = {"real_vectors": len(known), "synthetic_vectors": len(all_files) - len(known)}
    res10k = run_map(f"cifar10-test, all {len(all_files)} images", MapSource("image", all_files, mat,
                     name="cifar10-test-10k"), emb, out / "cifar-10k.html", hlog, labels=list(CIFAR),
                     vocabulary=None, cache_dir=str(out / "labels"))
    hlog["naming_quality_cifar_labels"] = naming_quality(res10k, all_y)
    hlog["browser"] = browser_check(out / "cifar-10k.html")
    print("  browser:", hlog["browser"], flush=True)
    report["cifar10_10k_images"] = hlog

    for n in args.sizes:
        classes = rng.integers(0, len(CIFAR), n)
        src = MapSource("image", [f"synthetic/{CIFAR[c]}/{k}" for k, c in enumerate(classes)], synthetic(classes),
                        name=f"synthetic-{n}")
        slog: dict = {}
        res = run_map(f"synthetic {n} (CIFAR-10 vectors + noise)", src, emb, out / f"synthetic-{n}.html", slog,
                      labels=list(CIFAR), vocabulary=None, thumbnails=False, cache_dir=str(out / "labels"))
        slog["naming_quality_cifar_labels"] = naming_quality(res, classes)
        q = slog["naming_quality_cifar_labels"]
        print(f"  naming: name = majority class for {q['name_equals_majority_share']:.1%} of images in named clusters "
              f"(coverage {q['coverage_named']:.1%})", flush=True)
        slog["browser"] = browser_check(out / f"synthetic-{n}.html")
        print("  browser:", slog["browser"], flush=True)
        report[f"synthetic_{n}"] = slog
    report["load_average_at_end"] = os.getloadavg()
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    print(json.dumps({k: v for k, v in report.items() if not isinstance(v, dict)}, default=str))


if __name__ == "__main__":
    main()
