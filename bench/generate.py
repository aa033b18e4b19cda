"""Caption throughput at BLIP2-OPT-2.7B shapes with random bf16 weights.

    python bench/generate.py [--out DIR] [--tiny]

Sampling (top-k 6, temperature 2) at B = 64, 256, 1024 and beam search (5 beams,
no_repeat_ngram_size 2) at B = 16, 64, each generating exactly 60 new tokens (EOS ignored, as
in ../shared/anchors/hf_baseline.py), plus the ViT-g forward alone. Reports compile time (first
call) and the best of the timed calls. Compare only with transformers run in the same job on the
same card (bench/gpu_check.sh does both). `--tiny` runs small shapes, for a CPU smoke test.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vlrm_jax.generate import GenerationConfig  # noqa: E402
from vlrm_jax.generate.search import generate_jit  # noqa: E402
from vlrm_jax.models.blip2 import Blip2Captioner, Blip2Config  # noqa: E402
from vlrm_jax.models.opt import OPTConfig  # noqa: E402
from vlrm_jax.models.qformer import QFormerConfig  # noqa: E402
from vlrm_jax.models.vit import VisionConfig  # noqa: E402


def full_config() -> Blip2Config:
    bf16 = dict(dtype="bfloat16", param_dtype="bfloat16")
    return Blip2Config(vision=VisionConfig(**bf16), qformer=QFormerConfig(), text=OPTConfig(**bf16))


def tiny_config() -> Blip2Config:
    return Blip2Config(
        vision=VisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=56, patch_size=14),
        qformer=QFormerConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, encoder_hidden_size=64),
        text=OPTConfig(vocab_size=512, hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4, word_embed_proj_dim=64),
        num_query_tokens=8, image_token_index=511)


def timed(fn, reps: int):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t)
    return first, best


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="runs/bench")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--reps", type=int, default=2)
    args = p.parse_args(argv)
    cfg = tiny_config() if args.tiny else full_config()
    sample_sizes, beam_sizes = ((4, 8), (2, 4)) if args.tiny else ((64, 256, 1024), (16, 64))
    t = time.perf_counter()
    model = nnx.jit(lambda: Blip2Captioner(cfg, rngs=nnx.Rngs(0)))()
    graphdef, state = nnx.split(model)
    out = {"device": jax.devices()[0].device_kind, "backend": jax.default_backend(), "jax": jax.__version__,
           "build_s": round(time.perf_counter() - t, 1),
           "params_M": round(sum(x.size for x in jax.tree.leaves(state)) / 1e6, 1)}
    size = cfg.vision.image_size
    key = jax.random.key(0)
    os.makedirs(args.out, exist_ok=True)

    def record():  # after every measurement: a run cut short by its time limit keeps what it measured
        print(json.dumps(out), flush=True)
        with open(os.path.join(args.out, "generate.json"), "w") as f:
            json.dump(out, f, indent=1)

    def run(batch, gen):
        pixels = jax.random.normal(key, (batch, size, size, 3), jnp.bfloat16 if not args.tiny else jnp.float32)
        return timed(lambda: generate_jit(graphdef, gen, state, pixels, key).tokens, args.reps)

    vit = jax.jit(lambda st, px: nnx.merge(graphdef, st).vision_model(px))
    for b in sample_sizes[-1:]:
        px = jax.random.normal(key, (b, size, size, 3))
        first, best = timed(lambda: vit(state, px), args.reps)
        out[f"vit_B{b}_s"] = round(best, 3)
    record()
    sample = GenerationConfig(do_sample=True, top_k=6, temperature=2.0, max_new_tokens=60, ignore_eos=True)
    for b in sample_sizes:
        first, best = run(b, sample)
        out[f"sample_B{b}_compile_s"] = round(first - best, 1)
        out[f"sample_B{b}_s"], out[f"sample_B{b}_caps_per_s"] = round(best, 3), round(b / best, 1)
        record()
    beam = GenerationConfig(num_beams=5, no_repeat_ngram_size=2, max_new_tokens=60, ignore_eos=True)
    for b in beam_sizes:
        first, best = run(b, beam)
        out[f"beam5_B{b}_compile_s"] = round(first - best, 1)
        out[f"beam5_B{b}_s"], out[f"beam5_B{b}_caps_per_s"] = round(best, 3), round(b / best, 1)
        record()
    return out


if __name__ == "__main__":
    main()
