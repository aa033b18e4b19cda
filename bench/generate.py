"""Caption throughput at BLIP2-OPT-2.7B shapes with random bf16 weights.

    python bench/generate.py [--out DIR] [--tiny] [--side jax|transformers] [--sample-batches 1024,...]
                             [--beam-batches 64,...]

Sampling (top-k 6, temperature 2) at B = 1024, 256, 64 and beam search (5 beams,
no_repeat_ngram_size 2) at B = 64, 16, each generating exactly 60 new tokens (EOS ignored, as
in ../shared/anchors/hf_baseline.py), plus the ViT-g forward alone; the points the targets name
(sampling at 1024, beam at 64) come first, so a run cut short by its time limit keeps them.
Reports compile time (first call) and the best of the timed calls. `--side transformers` times
transformers' `generate` on the same points instead (a random Blip2ForConditionalGeneration of the
same shapes in bf16, built on the card as the anchor builds it): bench/gpu_check.sh uses it for
the batch sizes the anchor script does not time. Compare only numbers from the same job on the
same card. `--tiny` runs small shapes, for a CPU smoke test.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Iterator

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


def random_params(ctor, seed: int = 0) -> dict:
    """{path: array} of random parameters for the module `ctor` builds, one small jitted draw per
    distinct shape: N(0, 0.02) weights, LayerNorm scales 1, biases 0. Jitting the module's own
    initialisation instead makes one program holding every parameter's random draw; at the released
    shapes XLA's GPU compiler had not finished it after 190 s on an H200 (2026-12-04)."""
    from vlrm_jax.models import build

    draw = jax.jit(lambda key, shape, dtype: (0.02 * jax.random.normal(key, shape, jnp.float32)).astype(dtype),
                   static_argnums=(1, 2))
    out = {}
    for i, (path, want) in enumerate(sorted(build.flat_params(build.abstract(ctor)).items(), key=lambda kv: str(kv[0]))):
        if path[-1] == "scale":
            out[path] = jnp.ones(want.shape, want.dtype)
        elif path[-1] == "bias":
            out[path] = jnp.zeros(want.shape, want.dtype)
        else:
            out[path] = draw(jax.random.key(seed * 100003 + i), tuple(want.shape), want.dtype)
    return out


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


def points(sample_sizes, beam_sizes) -> list[tuple[str, int]]:
    """Sampling and beam points alternated, in the order given (the targets' sizes first)."""
    sample, beam = [("sample", b) for b in sample_sizes], [("beam5", b) for b in beam_sizes]
    out = []
    for i in range(max(len(sample), len(beam))):
        out += sample[i:i + 1] + beam[i:i + 1]
    return out


def transformers_side(args, sample_sizes, beam_sizes) -> Iterator[dict]:
    """transformers' generate on the same points: a random bf16 model of the same shapes, built on
    the card (as the anchor builds it), with the anchor's generation arguments; yields the results
    so far after each point."""
    import torch
    from transformers import Blip2Config, Blip2ForConditionalGeneration

    from convert import released_shapes
    from convert.to_hf import hf_config_for
    from vlrm_jax.checkpoint import kinds

    device = "cuda" if torch.cuda.is_available() else "cpu"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if args.tiny:  # the tiny shapes, in transformers' terms
        hf_cfg = Blip2Config.from_dict(hf_config_for(kinds.BLIP2_OPT, tiny_config().to_dict()))
    else:
        hf_cfg = released_shapes.blip2_opt_2_7b()
    t = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(device):
        model = Blip2ForConditionalGeneration(hf_cfg)
    model = model.to(torch.bfloat16 if not args.tiny else torch.float32).eval()
    out = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "side": "transformers",
           "torch": torch.__version__, "build_s": round(time.perf_counter() - t, 1)}
    size, common = hf_cfg.vision_config.image_size, dict(max_new_tokens=60, min_new_tokens=60, eos_token_id=None)
    kwargs = {"sample": dict(do_sample=True, top_k=6, temperature=2.0),
              "beam5": dict(num_beams=5, no_repeat_ngram_size=2, do_sample=False)}
    for name, b in points(sample_sizes, beam_sizes):
        kw = kwargs[name]
        px = torch.randn(b, 3, size, size, device=device, dtype=model.dtype)

        def call():
            with torch.no_grad():
                model.generate(pixel_values=px, **common, **kw)
            sync()

        first, best = timed(call, args.reps)
        out[f"{name}_B{b}_s"], out[f"{name}_B{b}_caps_per_s"] = round(best, 3), round(b / best, 1)
        yield out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--skip-vit", dest="vit", action="store_false", help="no ViT-alone timing")
    p.add_argument("--side", choices=["jax", "transformers"], default="jax")
    p.add_argument("--sample-batches", dest="sample_batches", default=None, help="default 1024,256,64 (tiny: 8,4)")
    p.add_argument("--beam-batches", dest="beam_batches", default=None, help="default 64,16 (tiny: 4,2)")
    args = p.parse_args(argv)
    sizes = lambda text, default: default if text is None else tuple(int(x) for x in text.split(",") if x)  # noqa: E731
    sample_sizes = sizes(args.sample_batches, (8, 4) if args.tiny else (1024, 256, 64))
    beam_sizes = sizes(args.beam_batches, (4, 2) if args.tiny else (64, 16))
    os.makedirs(args.out, exist_ok=True)
    if args.side == "transformers":
        out = {}
        for out in transformers_side(args, sample_sizes, beam_sizes):
            print(json.dumps(out), flush=True)
            with open(os.path.join(args.out, "generate_transformers.json"), "w") as f:
                json.dump(out, f, indent=1)
        return out
    cfg = tiny_config() if args.tiny else full_config()
    t = time.perf_counter()
    from vlrm_jax.models import build

    ctor = lambda: Blip2Captioner(cfg, rngs=nnx.Rngs(0))  # noqa: E731
    model = build.from_params(ctor, random_params(ctor))
    graphdef, state = nnx.split(model)
    out = {"device": jax.devices()[0].device_kind, "backend": jax.default_backend(), "jax": jax.__version__,
           "build_s": round(time.perf_counter() - t, 1),
           "params_M": round(sum(x.size for x in jax.tree.leaves(state)) / 1e6, 1)}
    size = cfg.vision.image_size
    key = jax.random.key(0)

    def record():  # after every measurement: a run cut short by its time limit keeps what it measured
        print(json.dumps(out), flush=True)
        with open(os.path.join(args.out, "generate.json"), "w") as f:
            json.dump(out, f, indent=1)

    def run(batch, gen):
        pixels = jax.random.normal(key, (batch, size, size, 3), jnp.bfloat16 if not args.tiny else jnp.float32)
        return timed(lambda: generate_jit(graphdef, gen, state, pixels, key).tokens, args.reps)

    record()
    vit = jax.jit(lambda st, px: nnx.merge(graphdef, st).vision_model(px))
    for b in sample_sizes[:1] if args.vit else ():
        px = jax.random.normal(key, (b, size, size, 3))
        first, best = timed(lambda: vit(state, px), args.reps)
        out[f"vit_B{b}_s"], out[f"vit_B{b}_compile_s"] = round(best, 3), round(first - best, 1)
        record()
    gen = {"sample": GenerationConfig(do_sample=True, top_k=6, temperature=2.0, max_new_tokens=60, ignore_eos=True),
           "beam5": GenerationConfig(num_beams=5, no_repeat_ngram_size=2, max_new_tokens=60, ignore_eos=True)}
    for name, b in points(sample_sizes, beam_sizes):
        first, best = run(b, gen[name])
        out[f"{name}_B{b}_compile_s"] = round(first - best, 1)
        out[f"{name}_B{b}_s"], out[f"{name}_B{b}_caps_per_s"] = round(best, 3), round(b / best, 1)
        record()
    return out


if __name__ == "__main__":
    main()
