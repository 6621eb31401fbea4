#!/usr/bin/env bash
# Fetch the extra caption data of the built-in aligned model into DIR (default ./align-data, relative to where the
# `mmembed align` command of the model card runs: the repository root; keep it out of git); prints the --data arguments.
#   emoji-datasource-google 15.1.2 (npm): Google Noto emoji PNGs (64 px), images Apache-2.0, data MIT (iamcal/emoji-data)
# Writes DIR/emoji-google/captions.jsonl: one row per emoji with a Google image (not skin-tone variants, not the
# "Component" category), caption = the Unicode name in lower case ("grinning face"), image path relative to the file.
# Also writes DIR/cifar10-subset.jsonl: every 5th CIFAR-10 test image of the 80% that aligned_eval does NOT hold out
# (1,600 images, captions as `mmembed align --data cifar10-test` gives them), through a DIR/cifar10-test link; the
# held-out CIFAR-10 evaluation stays untouched; and DIR/cifar10-rest/captions.jsonl: the other 6,400 held-in images.
# Run with the project's venv active (it imports multimodal_embed.align for the split).
set -euo pipefail
DIR="${1:-align-data}"
SHARED="${SHARED:-$(cd "$(dirname "$0")/../.." && pwd)/shared}"
mkdir -p "$DIR"
ln -sfn "$SHARED/data/cifar10-test" "$DIR/cifar10-test"
(cd "$DIR" && python - <<'PY'
import json
from pathlib import Path

from multimodal_embed.align import is_validation, load_pairs

held_in = [(k, c) for _, c, k in load_pairs("cifar10-test") if not is_validation(k, 20)]
rows = [json.dumps({"image": f"cifar10-test/{k}", "caption": c}) for k, c in held_in[::5]]
Path("cifar10-subset.jsonl").write_text("\n".join(rows) + "\n")
print(f"{len(rows)} CIFAR-10 captions", flush=True)
# The other 4/5 of the held-in images, appended as a last source (so the subset's cached trunk features stay valid),
# keyed as in the folder ("airplane/x.png", through class-folder links) so the trainer's own split keeps them all.
rest = Path("cifar10-rest")
rest.mkdir(exist_ok=True)
for d in sorted(Path("cifar10-test").iterdir()):
    if d.is_dir() and not (rest / d.name).exists():
        (rest / d.name).symlink_to(Path("..") / "cifar10-test" / d.name)
subset = {k for k, _ in held_in[::5]}
rows = [json.dumps({"image": k, "caption": c}) for k, c in held_in if k not in subset]
(rest / "captions.jsonl").write_text("\n".join(rows) + "\n")
print(f"{len(rows)} more CIFAR-10 captions", flush=True)
PY
)
mkdir -p "$DIR/emoji-google"
cd "$DIR/emoji-google"
if [ ! -f package/emoji.json ]; then
  npm pack --silent emoji-datasource-google@15.1.2 >/dev/null
  tar xzf emoji-datasource-google-15.1.2.tgz
  rm emoji-datasource-google-15.1.2.tgz
fi
python3 - <<'PY'
import json
from pathlib import Path

rows = json.loads(Path("package/emoji.json").read_text())
out = []
for r in sorted(rows, key=lambda r: r["image"]):
    name = (r.get("name") or r.get("short_name") or "").strip().lower()
    img = Path("package/img/google/64") / r["image"]
    if r.get("has_img_google") and r.get("category") != "Component" and name and img.is_file():
        out.append(json.dumps({"image": str(img), "caption": name}))
Path("captions.jsonl").write_text("\n".join(out) + "\n")
print(f"{len(out)} emoji captions", flush=True)
PY
echo "--data $DIR/cifar10-subset.jsonl --data $DIR/emoji-google/captions.jsonl --data $DIR/cifar10-rest/captions.jsonl"
