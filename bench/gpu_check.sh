#!/usr/bin/env bash
# One script for a lent GPU machine: the GPU tests, our generation benchmark and the transformers
# anchor, in the same run on the same card. Prepare here with bench/gpu_wheels.sh (wheels the
# image lacks -> .whl/, the anchor -> .anchors/), then run with carry [".whl", ".anchors"]:
#     bench/gpu_check.sh            (results in $OUT, or runs/gpu)
# DRY_RUN=1 checks the script itself on a CPU machine: tiny benchmark shapes, no anchor.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
# Most needed first, each stage bounded so that one call (10 minutes at most) reaches the end:
# our benchmark, the transformers anchor on the same card, then the full-size GPU parity tests.
timeout "${BENCH_S:-270}" python3 bench/generate.py --out "$OUT" ${DRY_RUN:+--tiny} 2>&1 | tee "$OUT/bench.txt" | tail -3
ANCHOR=$(ls .anchors/hf_baseline.py ../shared/anchors/hf_baseline.py 2>/dev/null | head -1)
if [ -n "${DRY_RUN:-}" ]; then
    echo "dry run: anchor skipped" | tee "$OUT/anchor.txt"
elif [ -n "$ANCHOR" ]; then
    timeout "${ANCHOR_S:-150}" python3 "$ANCHOR" "$OUT" 2>&1 | tee "$OUT/anchor.txt" | tail -3
else
    echo "no hf_baseline.py (run bench/gpu_wheels.sh here and carry .anchors)" | tee "$OUT/anchor.txt"
fi
# torch and JAX share the card: no up-front grab of 75% of its memory by JAX
XLA_PYTHON_CLIENT_PREALLOCATE=false timeout "${TESTS_S:-150}" python3 -m pytest -q -s -p no:cacheprovider -m gpu tests 2>&1 \
    | tee "$OUT/gpu_tests.txt" | grep -E "diff|passed|failed|skipped|Error"
