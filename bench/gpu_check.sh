#!/usr/bin/env bash
# One script for a lent GPU machine: our generation benchmark, transformers on the same card, the
# transformers anchor, the whole A2C step beside its PyTorch composite and the full-size parity
# tests, in one run. Prepare here with bench/gpu_wheels.sh (wheels the image lacks -> .whl/, the
# anchor -> .anchors/), then run with carry [".whl", ".anchors"]:
#     bench/gpu_check.sh            (results in $OUT, or runs/gpu)
# DRY_RUN=1 checks the script itself on a CPU machine: tiny shapes, no anchor.
# STAGES picks and orders the stages (default: all, in this order, most wanted first):
#     generate hf anchor train_step tests
# Each stage has its own time limit (GENERATE_S, HF_S, ANCHOR_S, TRAIN_S, TESTS_S) and the whole run
# one deadline (DEADLINE_S, default 585 s: a 600 s call): a stage gets at most what is left, and one
# cut short keeps what it already wrote under $OUT. Seen on one H200 (2026-12-04): machine start
# about 30 s, hf 35 s, anchor 42 s, the two CLIP parity tests 95 s; the benchmark's old one-program
# random init did not compile in 190 s (replaced), and the step at released shapes is unmeasured:
# give train_step most of a call of its own (STAGES="train_step" TRAIN_S=540 DEADLINE_S=570).
# GENERATE_ARGS adds arguments to bench/generate.py (e.g. "--sample-batches 1024 --beam-batches 64
# --skip-vit"); TESTS_PATH narrows the tests (default tests).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
START=$(date +%s)
DEADLINE_S=${DEADLINE_S:-585}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  python3 -c "import jax, flax, torch, transformers; print('jax', jax.__version__, 'flax', flax.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__, jax.devices())"
} | tee "$OUT/machine.txt"
STAGES=${STAGES:-generate hf anchor train_step tests}
TINY=${DRY_RUN:+--tiny}

# run NAME LIMIT CMD...: CMD under min(LIMIT, what is left before the deadline), its output in $OUT/NAME.txt
run() {
    local name=$1 limit=$2
    shift 2
    local left=$((DEADLINE_S - ($(date +%s) - START)))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt 20 ]; then
        echo "skipped: $left s left before the deadline" | tee "$OUT/$name.txt"
        return
    fi
    echo "(limit ${limit} s)"
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.txt" | tail -"${TAIL:-3}"
}
stage_generate() {  # ours at the released shapes: sampling B=1024/256/64, beam 5 B=64/16
    run generate "${GENERATE_S:-200}" python3 bench/generate.py --out "$OUT" $TINY ${GENERATE_ARGS:-}
}
stage_hf() {  # transformers on the same card where the anchor script has no point: sampling at B=1024
    local sizes=1024
    [ -n "${DRY_RUN:-}" ] && sizes=8
    run hf "${HF_S:-60}" python3 bench/generate.py --out "$OUT" $TINY --side transformers \
        --sample-batches "${HF_SAMPLE:-$sizes}" --beam-batches ""
}
stage_anchor() {
    ANCHOR=$(ls .anchors/hf_baseline.py ../shared/anchors/hf_baseline.py 2>/dev/null | head -1)
    if [ -n "${DRY_RUN:-}" ]; then
        echo "dry run: anchor skipped" | tee "$OUT/anchor.txt"
    elif [ -n "$ANCHOR" ]; then
        run anchor "${ANCHOR_S:-120}" python3 "$ANCHOR" "$OUT"
    else
        echo "no hf_baseline.py (run bench/gpu_wheels.sh here and carry .anchors)" | tee "$OUT/anchor.txt"
    fi
}
stage_train_step() {
    # the whole step beside the PyTorch composite, released shapes in bf16 (stage times off: each
    # stage would compile apart, minutes at these shapes)
    local shapes=released
    [ -n "${DRY_RUN:-}" ] && shapes=tiny
    TAIL=9 run train_step "${TRAIN_S:-250}" python3 bench/train_step.py --shapes "$shapes" \
        --variants "${TRAIN_VARIANTS:-vlrm}" --reps 2 --no-stages --no-memory --json "$OUT/train_step.json"
}
stage_tests() {
    # full-size bf16 parity of captioner, ITM and both CLIPs; torch and JAX share the card
    XLA_PYTHON_CLIENT_PREALLOCATE=false TAIL=12 run gpu_tests "${TESTS_S:-150}" \
        python3 -m pytest -q -s -p no:cacheprovider -m gpu ${TESTS_PATH:-tests}
}
for stage in $STAGES; do
    echo "== $stage at $(($(date +%s) - START)) s"
    "stage_$stage"
done
echo "== done at $(($(date +%s) - START)) s"
