#!/usr/bin/env bash
# One script for a lent GPU machine: GPU tests, our benchmark, and the transformers anchor in the
# same run on the same card. Results land in ${OUT:-runs/gpu}.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
XLA_PYTHON_CLIENT_PREALLOCATE=false python -m pytest -q -s -m gpu tests 2>&1 | tee "$OUT/gpu_tests.txt"
python bench/generate.py --out "$OUT" 2>&1 | tail -3
python ../shared/anchors/hf_baseline.py "$OUT" 2>&1 | tail -2 || python shared/anchors/hf_baseline.py "$OUT" 2>&1 | tail -2
