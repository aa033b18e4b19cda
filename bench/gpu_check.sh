#!/usr/bin/env bash
# One script for a lent GPU machine: the GPU tests, our generation benchmark and the transformers
# anchor, in the same run on the same card. Prepare here with bench/gpu_wheels.sh (wheels the
# image lacks -> .whl/, the anchor -> .anchors/), then run with carry [".whl", ".anchors"]:
#     bench/gpu_check.sh            (results in $OUT, or runs/gpu)
# DRY_RUN=1 checks the script itself on a CPU machine: tiny benchmark shapes, no anchor.
# STAGES picks and orders the stages (default: all, in this order; one call of 10 minutes holds
# about three): generate anchor tests vs_hf train_step. Two calls, e.g.
#     STAGES="vs_hf train_step anchor" bench/gpu_check.sh   then   STAGES="generate tests" bench/gpu_check.sh
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
STAGES=${STAGES:-generate anchor tests vs_hf train_step}
stage_generate() {
    timeout "${BENCH_S:-270}" python3 bench/generate.py --out "$OUT" ${DRY_RUN:+--tiny} 2>&1 | tee "$OUT/bench.txt" | tail -3
}
stage_anchor() {
    ANCHOR=$(ls .anchors/hf_baseline.py ../shared/anchors/hf_baseline.py 2>/dev/null | head -1)
    if [ -n "${DRY_RUN:-}" ]; then
        echo "dry run: anchor skipped" | tee "$OUT/anchor.txt"
    elif [ -n "$ANCHOR" ]; then
        timeout "${ANCHOR_S:-150}" python3 "$ANCHOR" "$OUT" 2>&1 | tee "$OUT/anchor.txt" | tail -3
    else
        echo "no hf_baseline.py (run bench/gpu_wheels.sh here and carry .anchors)" | tee "$OUT/anchor.txt"
    fi
}
stage_tests() {
    # torch and JAX share the card: no up-front grab of 75% of its memory by JAX
    XLA_PYTHON_CLIENT_PREALLOCATE=false timeout "${TESTS_S:-150}" python3 -m pytest -q -s -p no:cacheprovider -m gpu tests 2>&1 \
        | tee "$OUT/gpu_tests.txt" | grep -E "diff|passed|failed|skipped|Error"
}
stage_vs_hf() {
    # the project and transformers on the same random weights: sampling at B=64/256/1024, beam 5 at 16/64
    if [ -n "${DRY_RUN:-}" ]; then
        timeout "${VS_HF_S:-200}" python3 bench/generate_vs_hf.py --batch-sizes 2 --reps 1 --json "$OUT/vs_hf.json" 2>&1 \
            | tee "$OUT/vs_hf.txt" | tail -4
    else
        timeout "${VS_HF_S:-200}" python3 bench/generate_vs_hf.py --batch-sizes 16,64,256,1024 --dtype bfloat16 \
            --json "$OUT/vs_hf.json" 2>&1 | tee "$OUT/vs_hf.txt" | tail -8
    fi
}
stage_train_step() {
    # the whole VLRM / VLRM-RS step beside the PyTorch composite, released shapes in bf16
    local shapes=released
    [ -n "${DRY_RUN:-}" ] && shapes=tiny
    timeout "${TRAIN_S:-240}" python3 bench/train_step.py --shapes "$shapes" ${DRY_RUN:+--reps 1 --no-memory} --json "$OUT/train_step.json" 2>&1 | tee "$OUT/train_step.txt" | tail -9
}
for stage in $STAGES; do
    echo "== $stage"
    "stage_$stage"
done
