"""GPU throughput of the full-size nomic towers (random weights), for the scaling plan in the README.

    PYTHONPATH=. python benchmarks/gpu_throughput.py [--device cuda|cpu] [--out results.json]

(1) vision model alone, batch B, fp32 (TF32 off), bf16, fp16: images/s and agreement with fp32;
(2) text model: Cranfield abstracts + queries through NomicTextEncoder, padded vs unpadded (packed) batches:
    real tokens/s of each, their ratio, and the cosine between the two;
(3) end to end, in-memory JPEGs through Embedder.embed_images, on 1024x768 photos and on ImageNet-size
    (500x375) photos made from scikit-image's sample photos: (a) CPU decode threads (JPEG draft on, the
    default before gpu_decode), (b) gpu_decode (nvJPEG + device resize), (c) the model alone on the same
    batch size; images/s, ratios b/a and b/c, GPU utilisation sampled during (a) and (b), and the device
    path's agreement with the PIL path (max |pixel diff| in normalised units, min cosine).

``--device cpu`` (automatic without CUDA) is a smoke run with small sizes and the tiny fixture models: it
checks the script, its numbers say nothing about a GPU. Results go to ``--out``, or to ``$OUT/gpu_throughput.json`` when ``$OUT`` is set.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from multimodal_embed.precision import cpu_capability

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("MMEMBED_SHARED", HERE.parent.parent / "shared"))
FIXTURES = SHARED / "fixtures" / "nomic"


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def bench(fn, warmup=3, iters=10):
    for _ in range(warmup):
        fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        out = fn()
    sync()
    return (time.perf_counter() - t0) / iters, out



class GpuUtilisation:
    """Mean GPU utilisation (%) while the block runs: torch.cuda.utilization (pynvml) or nvidia-smi, every 0.1 s."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.samples: list[float] = []
        self._stop = threading.Event()

    def _read(self) -> float | None:
        try:
            return float(torch.cuda.utilization())
        except Exception:  # noqa: BLE001 - no pynvml: ask nvidia-smi
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                      "-i", str(torch.cuda.current_device())], capture_output=True, text=True,
                                     timeout=5, check=False)
                return float(out.stdout.strip().splitlines()[0])
            except Exception:  # noqa: BLE001
                return None

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            value = self._read()
            if value is not None:
                self.samples.append(value)

    def __enter__(self):
        if self.enabled:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self._stop.set()
            self._thread.join()

    @property
    def mean(self) -> float | None:
        return round(sum(self.samples) / len(self.samples), 1) if self.samples else None


def cranfield() -> list[str]:
    folder = SHARED / "data" / "ir" / "cranfield"
    out = []
    for name in ("cran.all.1400", "cran.qry"):
        for rec in re.split(r"^\.I ", (folder / name).read_text(), flags=re.MULTILINE)[1:]:
            out.append(" ".join(rec.split("\n.W\n", 1)[-1].split()))
    return out


def photos(size: tuple[int, int], n: int) -> list[bytes]:
    """``n`` distinct JPEGs (quality 90, 4:2:0) of ``size`` cut from scikit-image's sample photos."""
    from PIL import Image

    try:
        from skimage import data

        sources = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.immunohistochemistry()]
    except ImportError:  # the shared test photos (1800x1200) instead
        folder = SHARED / "data" / "images-odd" / "exif_orientation_jpeg"
        sources = [np.asarray(Image.open(folder / f"{k}_1.jpg").convert("RGB")) for k in ("Landscape", "Portrait")]
    out = []
    rng = np.random.default_rng(0)
    for i in range(n):
        src = Image.fromarray(sources[i % len(sources)])
        w, h = src.size
        box_w, box_h = int(w * rng.uniform(0.6, 1)), int(h * rng.uniform(0.6, 1))
        x, y = int(rng.integers(0, w - box_w + 1)), int(rng.integers(0, h - box_h + 1))
        img = src.crop((x, y, x + box_w, y + box_h)).resize(size, Image.BICUBIC)
        if i % 2:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def config(kind: str, gpu: bool) -> dict:
    """The full-size nomic-embed-{kind}-v1.5 config on a GPU; the tiny test fixture's for a CPU smoke run."""
    path = HERE / f"configs/config.nomic-embed-{kind}-v1.5.json" if gpu else FIXTURES / f"{kind}-v1.5-tiny/config.json"
    return json.loads(path.read_text())


def random_vision(dev: torch.device, gpu: bool):
    from multimodal_embed.models.nomic_vision import NomicVisionConfig, NomicVisionModel

    cfg = NomicVisionConfig.from_hf_dict(config("vision", gpu))
    torch.manual_seed(0)
    model = NomicVisionModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    return model.to(dev)


def vision_alone(res: dict, model, dev: torch.device, B: int, gpu: bool) -> None:
    x = torch.randn(B, 3, 224, 224, device=dev)
    ref = None
    dtypes = (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)) if gpu else \
        (("fp32", torch.float32),)
    for name, dt in dtypes:
        m = model.to(dt)
        with torch.inference_mode():
            t, out = bench(lambda m=m, dt=dt: m(x.to(dt)), iters=10 if gpu else 1, warmup=3 if gpu else 0)
        out = F.normalize(out.float(), dim=-1)
        ref = out if ref is None else ref
        res[f"vision_{name}_images_per_s"] = round(B / t, 1)
        res[f"vision_{name}_min_cos_vs_fp32"] = float((out * ref).sum(-1).min())
        print(name, res[f"vision_{name}_images_per_s"], "img/s", res[f"vision_{name}_min_cos_vs_fp32"], flush=True)


def text_padded_vs_unpadded(res: dict, dev: torch.device, dt: torch.dtype, gpu: bool) -> None:
    from transformers import AutoTokenizer

    from multimodal_embed.models.nomic_bert import NomicBertConfig, NomicBertModel
    from multimodal_embed.text import NomicTextEncoder

    tcfg = NomicBertConfig.from_hf_dict(config("text", gpu))
    torch.manual_seed(0)
    model = NomicBertModel(tcfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p) if name.endswith("weight") else 0.05 * torch.randn_like(p))
            else:
                p.normal_(0, 0.02)
    model = model.to(dev, dt)
    tok = AutoTokenizer.from_pretrained(str(FIXTURES / "text-v1.5-tiny"))
    texts = cranfield()
    if not gpu:
        texts = texts[::25]  # 65 texts: a smoke run
    enc = NomicTextEncoder(model, tok, matryoshka=True)
    lengths = [len(t) for t in enc.tokenize(enc.apply_prefix(texts, "search_document"))]
    res["text_corpus"] = {"texts": len(texts), "tokens": sum(lengths), "max_tokens": max(lengths),
                          "mean_tokens": round(sum(lengths) / len(lengths), 1)}
    out = {}
    for unpadded in (False, True, False, True):  # twice each, interleaved; the second of each is kept
        enc.unpadded = unpadded
        kw = {"task": "search_document", "batch_size": 256 if gpu else 32, "show_progress": False}
        enc.encode(texts[:64], **kw)  # warm-up
        sync()
        t0 = time.perf_counter()
        out[unpadded] = enc.encode(texts, **kw)
        sync()
        res[f"text_{'unpadded' if unpadded else 'padded'}_tokens_per_s"] = round(sum(lengths) /
                                                                             (time.perf_counter() - t0))
    res["text_unpadded_over_padded"] = round(res["text_unpadded_tokens_per_s"] / res["text_padded_tokens_per_s"], 3)
    res["text_unpadded_min_cos_vs_padded"] = float((out[True] * out[False]).sum(-1).min())
    print("text tokens/s padded", res["text_padded_tokens_per_s"], "unpadded", res["text_unpadded_tokens_per_s"],
          "ratio", res["text_unpadded_over_padded"], "min cos", res["text_unpadded_min_cos_vs_padded"], flush=True)


def end_to_end(res: dict, model, dev: torch.device, B: int, N: int, gpu: bool) -> None:
    from multimodal_embed.embedder import Embedder
    from multimodal_embed.images import ImagePreprocessor
    from multimodal_embed.vision import NomicVisionEncoder

    pre = ImagePreprocessor.from_dict(json.loads((HERE / "configs/preprocessor_config.nomic-embed-vision-v1.5.json")
                                                 .read_text()))
    workers = os.cpu_count() or 1
    for label, size in (("1024x768", (1024, 768)), ("imagenet_500x375", (500, 375))):
        jpegs = photos(size, min(N, 128))
        items = (jpegs * (N // len(jpegs) + 1))[:N]
        enc = NomicVisionEncoder(model, pre, max_pixels=None, jpeg_draft=True)
        emb = Embedder(vision_encoder=enc)
        # (c) the model alone at this batch size, on the device path's own crops
        with torch.inference_mode():
            x = torch.randint(0, 256, (B, 3, 224, 224), dtype=torch.uint8, device=dev)
            t, _ = bench(lambda enc=enc, x=x: enc.forward(x), iters=5 if gpu else 1, warmup=2 if gpu else 0)
        alone = B / t
        row = {"model_alone_images_per_s": round(alone, 1)}
        for key, gpu_decode in (("cpu_decode", False), ("gpu_decode", True)):
            enc.gpu_decode = gpu_decode
            emb.embed_images(items[:B], batch_size=B, num_workers=workers, show_progress=False)  # warm-up
            sync()
            with GpuUtilisation(gpu) as util:
                t0 = time.perf_counter()
                emb.embed_images(items, batch_size=B, num_workers=workers, show_progress=False)
                sync()
                dt = time.perf_counter() - t0
            row[f"{key}_images_per_s"] = round(len(items) / dt, 1)
            row[f"{key}_gpu_util_percent"] = util.mean
        row["gpu_over_cpu_decode"] = round(row["gpu_decode_images_per_s"] / row["cpu_decode_images_per_s"], 2)
        row["gpu_decode_share_of_model_alone"] = round(row["gpu_decode_images_per_s"] / alone, 3)
        # agreement with the exact PIL path (no draft), same model and dtype
        sample = jpegs[:32]
        enc.jpeg_draft = False
        enc.gpu_decode = False
        want = emb.embed_images(sample, batch_size=32, show_progress=False)
        cpu_crops = [enc.prepare(j, i) for i, j in enumerate(sample)]
        enc.gpu_decode = True
        got = emb.embed_images(sample, batch_size=32, show_progress=False)
        batch = [(i, enc.prepare(j, i)) for i, j in enumerate(sample)]
        dev_crops = enc.jpeg_decoder().finish(batch, sample, lambda it, i: None)
        diff = max(float((pre.normalize(torch.as_tensor(c)[None].to(dev)) - pre.normalize(d[None])).abs().max())
                   for c, (_, d) in zip(cpu_crops, dev_crops))
        row["device_vs_pil_max_abs_pixel_diff"] = round(diff, 4)
        row["device_vs_pil_min_cosine"] = float((got * want).sum(-1).min())
        res[f"end_to_end_{label}"] = row
        print("end to end", label, json.dumps(row), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    ap.add_argument("--out", default=None)
    ap.add_argument("--skip", default="", help="comma-separated sections to skip: vision,text,e2e")
    args = ap.parse_args()
    gpu = torch.cuda.is_available() if args.device == "auto" else args.device == "cuda"
    dev = torch.device("cuda" if gpu else "cpu")
    B, N = (256, 2048) if gpu else (4, 8)  # a CPU run checks the script only
    import torchvision

    res: dict = {"device": torch.cuda.get_device_name(0) if gpu else "cpu (smoke run)", "torch": torch.__version__,
                 "torchvision": torchvision.__version__, "cpus": os.cpu_count(), "cpu_model": cpu_capability().model,
                 "cpu_capability": torch.backends.cpu.get_cpu_capability(), "batch": B, "images": N}
    torch.backends.cuda.matmul.allow_tf32 = False
    skip = set(filter(None, args.skip.split(",")))
    model = random_vision(dev, gpu)
    if "vision" not in skip:
        vision_alone(res, model, dev, B, gpu)
    dt = torch.bfloat16 if gpu else torch.float32
    if "text" not in skip:
        text_padded_vs_unpadded(res, dev, dt, gpu)
    if "e2e" not in skip:
        end_to_end(res, model.to(dt), dev, B, N, gpu)
    text = json.dumps(res, indent=2)
    print(text)
    out = args.out or (os.path.join(os.environ["OUT"], "gpu_throughput.json") if os.environ.get("OUT") else None)
    if out:
        Path(out).write_text(text)


if __name__ == "__main__":
    main()
