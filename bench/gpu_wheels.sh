#!/usr/bin/env bash
# The packages the GPU checks need that the lent GPU machine's image lacks (it has jax, flax, optax,
# orbax, torch, torchvision, transformers, tokenizers, pytest, tensorboard, matplotlib), as wheels
# in .whl/, plus the transformers anchor in .anchors/. Run here, then name both in the run's carry.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl && mkdir -p .whl .anchors
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 ml_collections==1.1.0 tensorboardX==2.6.5
cp ../shared/anchors/hf_baseline.py .anchors/ 2>/dev/null || echo "no ../shared/anchors here: bring hf_baseline.py yourself" >&2
du -sh .whl .anchors
