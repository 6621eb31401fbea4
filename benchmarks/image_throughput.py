"""Image throughput, files to embeddings: embed_images vs the Hugging Face path, in one process.

The full-size nomic-embed-vision-v1.5 architecture with random weights (no download); real files from
../shared/data (the large EXIF JPEG photos and Tux Paint PNG stamps). (b) decodes with PIL, runs transformers'
CLIP image processor (PIL backend) with the hub config, then the same model, sequentially in batches of 32.

    python benchmarks/image_throughput.py [--n 96]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
FIXTURES = SHARED / "fixtures" / "nomic"


def files(n: int) -> list[str]:
    photos = sorted((SHARED / "data" / "images-odd" / "exif_orientation_jpeg").glob("*_1.jpg"))
    stamps = sorted((SHARED / "data" / "tuxpaint-stamps").rglob("*.png"))
    picked = [str(p) for p in photos] * 4 + [str(p) for p in stamps]
    return picked[:n]


def build(seed: int = 0) -> tuple[torch.nn.Module, dict]:
    """The full-size nomic-embed-vision-v1.5 architecture with random weights (N(0, 0.02)) and its hub
    preprocessor config."""
    from multimodal_embed.models.nomic_vision import NomicVisionConfig, NomicVisionModel

    torch.manual_seed(seed)
    cfg = NomicVisionConfig.from_hf_dict(json.loads((FIXTURES / "config.nomic-embed-vision-v1.5.json").read_text()))
    model = NomicVisionModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    return model, json.loads((FIXTURES / "preprocessor_config.nomic-embed-vision-v1.5.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=96)
    ap.add_argument("--bf16", action="store_true", help="also time the model in bfloat16 (not exact)")
    args = ap.parse_args()
    from transformers import CLIPImageProcessorPil

    from multimodal_embed.embedder import Embedder
    from multimodal_embed.images import ImagePreprocessor
    from multimodal_embed.vision import NomicVisionEncoder

    model, pre_cfg = build()
    encoder = NomicVisionEncoder(model, ImagePreprocessor.from_dict(pre_cfg), max_pixels=None)
    emb = Embedder(vision_encoder=encoder)
    hf = CLIPImageProcessorPil(**{k: v for k, v in pre_cfg.items() if not k.startswith("_")
                                  and k != "image_processor_type"})
    paths = files(args.n)

    def hf_path() -> tuple[np.ndarray, float]:
        out, prep = [], 0.0
        with torch.inference_mode():
            for s in range(0, len(paths), 32):
                t0 = time.perf_counter()
                imgs = [Image.open(p) for p in paths[s:s + 32]]  # the processor composites alpha on white
                pix = torch.from_numpy(hf(images=imgs, return_tensors="np")["pixel_values"])
                prep += time.perf_counter() - t0
                out.append(F.normalize(model(pix), dim=-1))
        return torch.cat(out).numpy(), prep

    exact = Embedder(vision_encoder=NomicVisionEncoder(model, encoder.preprocessor, max_pixels=None,
                                                       jpeg_draft=False))
    emb.embed_images(paths[:2])  # warm-up
    t0 = time.perf_counter()
    a = emb.embed_images(paths, show_progress=False)
    ta = time.perf_counter() - t0
    t0 = time.perf_counter()
    a0 = exact.embed_images(paths, show_progress=False)
    ta0 = time.perf_counter() - t0
    t0 = time.perf_counter()
    b, prep_b = hf_path()
    tb = time.perf_counter() - t0
    t0 = time.perf_counter()
    for p in paths:
        encoder.prepare(p, 0)
    prep_a = time.perf_counter() - t0
    print(f"{len(paths)} files, torch threads {torch.get_num_threads()}")
    print(f"a embed_images   {ta:6.2f} s  {len(paths) / ta:6.2f} images/s  (decode+preprocess alone, serial: "
          f"{prep_a:.2f} s = {prep_a / ta:.0%} of a's wall time, overlapped in worker threads)")
    print(f"b HF processor   {tb:6.2f} s  {len(paths) / tb:6.2f} images/s  (decode+preprocess {prep_b / tb:.0%})")
    print(f"a0 no JPEG draft {ta0:6.2f} s  {len(paths) / ta0:6.2f} images/s")
    print(f"a/b = {tb / ta:.2f}x   max |a - b| = {np.abs(a - b).max():.2e}  min cos {(a * b).sum(1).min():.6f}")
    print(f"a0/b = {tb / ta0:.2f}x   max |a0 - b| = {np.abs(a0 - b).max():.2e}")
    if args.bf16:
        fast = Embedder(vision_encoder=NomicVisionEncoder(model.to(torch.bfloat16), encoder.preprocessor,
                                                          max_pixels=None))
        fast.embed_images(paths[:2])
        t0 = time.perf_counter()
        c = fast.embed_images(paths, show_progress=False)
        tc = time.perf_counter() - t0
        print(f"c bf16 + draft   {tc:6.2f} s  {len(paths) / tc:6.2f} images/s  c/b = {tb / tc:.2f}x  "
              f"max |c - b| = {np.abs(c - b).max():.2e}  min cos {(c * b).sum(1).min():.5f}")


if __name__ == "__main__":
    main()
