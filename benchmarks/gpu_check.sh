#!/usr/bin/env bash
# The one GPU check for issue 17 (GPU decode + unpadded text): CUDA tests, then the throughput benchmark.
# Runs in < 8 minutes on one H100/H200-class GPU. Results (test log, JSON, nvidia-smi) go to $OUT if set,
# else to ./gpu_check_out. Usage, from the repository root, with the package's Python environment active:
#     bash benchmarks/gpu_check.sh
set -u
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# the test data: ../shared (developers' layout) or ./shared (a copy next to the package)
if [ -z "${MMEMBED_SHARED:-}" ] && [ ! -d ../shared ] && [ -d shared ]; then export MMEMBED_SHARED="$PWD/shared"; fi
PY="${PYTHON:-python}"
{
  date -u
  nvidia-smi || true
  "$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available(), torch.version.cuda)"
} > "$OUT_DIR/env.txt" 2>&1
cat "$OUT_DIR/env.txt"

# 1. tests: the CUDA ones (nvJPEG vs PIL, packed text on CUDA) and the CPU ones of the same files (~1 min; limit 200 s)
timeout 200 "$PY" -m pytest -q -rs -s -p no:cacheprovider \
  tests/test_gpu_decode.py tests/models/test_nomic_bert_unpadded.py -W ignore::DeprecationWarning \
  2>&1 | tee "$OUT_DIR/tests.log"
echo "tests exit: ${PIPESTATUS[0]}" | tee -a "$OUT_DIR/tests.log"

# 2. the benchmark (~2 min; limit 240 s): model alone, text padded vs unpadded, end to end CPU vs GPU decode
timeout 240 "$PY" benchmarks/gpu_throughput.py --out "$OUT_DIR/gpu_throughput.json" 2>&1 | tee "$OUT_DIR/benchmark.log"
echo "benchmark exit: ${PIPESTATUS[0]}" | tee -a "$OUT_DIR/benchmark.log"
