"""GPU throughput of the full-size nomic towers (random weights), for the scaling plan in the README.

    PYTHONPATH=. python benchmarks/gpu_throughput.py [--out results.json]

(1) vision model alone, batch 256, fp32 (TF32 off), bf16, fp16: images/s and agreement with fp32;
(2) text model alone, batch 256 x 128 tokens, bf16: tokens/s;
(3) end to end: 1024 in-memory 1024x768 JPEGs through Embedder.embed_images (decode threads on the host CPUs,
JPEG draft on), bf16, batch 256: images/s and the share the GPU model alone would need.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent


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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from multimodal_embed.embedder import Embedder
    from multimodal_embed.images import ImagePreprocessor
    from multimodal_embed.models.nomic_bert import NomicBertConfig, NomicBertModel
    from multimodal_embed.models.nomic_vision import NomicVisionConfig, NomicVisionModel
    from multimodal_embed.vision import NomicVisionEncoder

    gpu = torch.cuda.is_available()
    dev = torch.device("cuda" if gpu else "cpu")
    B, N = (256, 1024) if gpu else (4, 8)  # a CPU dry run checks the script only
    res: dict = {"device": torch.cuda.get_device_name(0) if gpu else "cpu (dry run)", "torch": torch.__version__,
                 "cpus": os.cpu_count()}
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    cfg = NomicVisionConfig.from_hf_dict(json.loads((HERE / "configs/config.nomic-embed-vision-v1.5.json").read_text()))
    model = NomicVisionModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    model = model.to(dev)
    x = torch.randn(B, 3, 224, 224, device=dev)
    ref = None
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        m = model.to(dt)
        with torch.inference_mode():
            t, out = bench(lambda m=m, dt=dt: m(x.to(dt)), iters=10 if gpu else 1, warmup=3 if gpu else 0)
        out = F.normalize(out.float(), dim=-1)
        ref = out if ref is None else ref
        res[f"vision_{name}_images_per_s"] = round(B / t, 1)
        res[f"vision_{name}_min_cos_vs_fp32"] = float((out * ref).sum(-1).min())
        print(name, res[f"vision_{name}_images_per_s"], "img/s", res[f"vision_{name}_min_cos_vs_fp32"], flush=True)
    model = model.to(torch.bfloat16)

    tcfg = NomicBertConfig.from_hf_dict(json.loads((HERE / "configs/config.nomic-embed-text-v1.5.json").read_text()))
    text = NomicBertModel(tcfg).eval().to(dev, torch.bfloat16)
    ids = torch.randint(1000, 30000, (B, 128), device=dev)
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        t, _ = bench(lambda: text(ids, mask), iters=10 if gpu else 1, warmup=3 if gpu else 0)
    res["text_bf16_tokens_per_s"] = round(B * 128 / t)
    print("text", res["text_bf16_tokens_per_s"], "tok/s", flush=True)

    from PIL import Image

    rng = np.random.default_rng(0)
    jpegs = []
    base = (rng.random((768 // 8, 1024 // 8, 3)) * 255).astype(np.uint8)
    for i in range(64):
        img = Image.fromarray(np.roll(base, i, axis=1)).resize((1024, 768), Image.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        jpegs.append(buf.getvalue())
    items = (jpegs * 16)[:N]  # 1024 images on a GPU
    pre = ImagePreprocessor.from_dict(json.loads((HERE / "configs/preprocessor_config.nomic-embed-vision-v1.5.json")
                                                 .read_text()))
    from multimodal_embed.images import load_image

    imgs = [load_image(j) for j in jpegs[:8]]
    want = np.stack([pre(im) for im in imgs])
    got = pre.normalize(torch.from_numpy(np.stack([pre.to_uint8(im) for im in imgs])).to(dev)).cpu().numpy()
    res["device_normalisation_max_abs_diff"] = float(np.abs(got - want).max())
    print("device normalisation max |diff|", res["device_normalisation_max_abs_diff"], flush=True)
    for draft in (True, False):
        emb = Embedder(vision_encoder=NomicVisionEncoder(model, pre, max_pixels=None, jpeg_draft=draft))
        emb.embed_images(items[:B], batch_size=B, num_workers=os.cpu_count())
        sync()
        t0 = time.perf_counter()
        emb.embed_images(items, batch_size=B, num_workers=os.cpu_count(), show_progress=False)
        sync()
        dt = time.perf_counter() - t0
        res[f"end_to_end_bf16_draft_{draft}_images_per_s"] = round(len(items) / dt, 1)
        print("end to end draft", draft, res[f"end_to_end_bf16_draft_{draft}_images_per_s"], "img/s", flush=True)
    print(json.dumps(res, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
