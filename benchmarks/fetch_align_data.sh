#!/usr/bin/env bash
# Fetch the extra caption data of the built-in aligned model into DIR (default /work/scratch16/align-data), outside
# the repository; prints the --data argument to pass to `mmembed align`.
#   emoji-datasource-google 15.1.2 (npm): Google Noto emoji PNGs (64 px), images Apache-2.0, data MIT (iamcal/emoji-data)
# Writes DIR/emoji-google/captions.jsonl: one row per emoji with a Google image (not skin-tone variants, not the
# "Component" category), caption = the Unicode name in lower case ("grinning face"), image path relative to the file.
set -euo pipefail
DIR="${1:-/work/scratch16/align-data}"
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
echo "--data $DIR/emoji-google/captions.jsonl"
