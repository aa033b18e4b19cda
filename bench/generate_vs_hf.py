"""Caption generation side by side with transformers, on the same random weights, in one run.

    python bench/generate_vs_hf.py [--batch-sizes 4,16,64] [--reps 2] [--dtype float32] [--json FILE]

One random transformers Blip2ForConditionalGeneration (a 3-layer ViT at 224 px, an 8-layer OPT of
width 512 with the real 50272-token vocabulary) is saved, converted with `convert.blip2` and
loaded as a vlrm_jax captioner. Both then caption the same pixels with the paper's two settings,
60 new tokens each (EOS ignored, so lengths do not depend on the random weights):
top-k 6 sampling at temperature 2, and beam 5 with no_repeat_ngram_size 2 and min_new_tokens 4.
Prints captions/s of each, the ratio (ours / transformers), our compile time (first call minus a
timed call) and, for beam search, how many rows give transformers' tokens exactly. Runs on CPU
or, unchanged, on a GPU (torch and JAX then share the card).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # torch shares the card
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

NEW_TOKENS = 60
SETTINGS = {
    "sample": dict(do_sample=True, top_k=6, temperature=2.0),
    "beam5": dict(num_beams=5, no_repeat_ngram_size=2, min_new_tokens=4),
}


def hf_config():
    from transformers import Blip2Config

    vision = dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=3, num_attention_heads=4,
                  image_size=224, patch_size=14, initializer_range=0.2)
    qformer = dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=4,
                   encoder_hidden_size=256, cross_attention_frequency=1, initializer_range=0.2)
    # init_std 0.2: logits far apart, so beam search has no near-ties and tokens can be compared
    text = dict(model_type="opt", vocab_size=50272, hidden_size=512, ffn_dim=2048, num_hidden_layers=8,
                num_attention_heads=8, word_embed_proj_dim=512, max_position_embeddings=256,
                bos_token_id=2, eos_token_id=2, pad_token_id=1, init_std=0.2)
    return Blip2Config(vision_config=vision, qformer_config=qformer, text_config=text,
                       num_query_tokens=32, image_token_index=50265, initializer_range=0.2)


def build(workdir: str, dtype: str, device: str):
    """The transformers model on `device` and our captioner converted from its saved weights."""
    from transformers import Blip2ForConditionalGeneration

    from convert.blip2 import convert
    from vlrm_jax import Captioner

    torch.manual_seed(0)
    hf = Blip2ForConditionalGeneration(hf_config()).eval()
    hf.save_pretrained(os.path.join(workdir, "hf"))
    convert(os.path.join(workdir, "hf"), os.path.join(workdir, "jax"), progress=False)
    cap = Captioner.load(os.path.join(workdir, "jax"), dtype=dtype, param_dtype=dtype)
    return hf.to(device=device, dtype=getattr(torch, dtype)), cap


def best_time(fn, reps: int):
    """(first call, fastest of `reps` further calls) in seconds."""
    t = time.perf_counter()
    fn()
    first = time.perf_counter() - t
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return first, best


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-sizes", default="4,16,64")
    p.add_argument("--settings", default="sample,beam5")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)

    from vlrm_jax.generate import GenerationConfig
    from vlrm_jax.generate.search import generate_jit

    device = "cuda" if torch.cuda.is_available() else "cpu"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    with tempfile.TemporaryDirectory() as tmp:
        hf, cap = build(tmp, args.dtype, device)
    machine = f"{jax.devices()[0].device_kind} ({jax.default_backend()}), {os.cpu_count()} CPU cores"
    print(f"# {machine}; jax {jax.__version__}, torch {torch.__version__}, torch threads {torch.get_num_threads()}")
    rows = []
    for b in [int(x) for x in args.batch_sizes.split(",")]:
        pixels = np.random.default_rng(b).normal(size=(b, 224, 224, 3)).astype(np.float32)
        px_torch = torch.tensor(pixels).permute(0, 3, 1, 2).contiguous().to(device=device, dtype=hf.dtype)
        px_jax = jax.device_put(pixels)
        for name in args.settings.split(","):
            kw = SETTINGS[name]
            cfg = GenerationConfig(max_new_tokens=NEW_TOKENS, ignore_eos=True, **kw)
            key = jax.random.key(0)
            hf_out = {}

            def run_hf():
                with torch.no_grad():
                    hf_out["ids"] = hf.generate(pixel_values=px_torch, max_new_tokens=NEW_TOKENS, eos_token_id=None, **kw)
                sync()

            def run_ours():
                hf_out["ours"] = np.asarray(generate_jit(cap._graphdef, cfg, cap._state, px_jax, key).tokens)

            _, hf_s = best_time(run_hf, args.reps)
            first, ours_s = best_time(run_ours, args.reps)
            row = dict(setting=name, batch=b, hf_caps_s=b / hf_s, ours_caps_s=b / ours_s, ratio=hf_s / ours_s,
                       compile_s=max(first - ours_s, 0.0))
            if name == "beam5":
                ref = hf_out["ids"].cpu().numpy()[:, hf.config.num_query_tokens + 1:]
                row["tokens_equal"] = f"{int(np.all(ref == hf_out['ours'], axis=1).sum())}/{b}"
            rows.append(row)
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    print(f"\n| setting | B | transformers captions/s | vlrm_jax captions/s | ratio | compile s | beam tokens equal |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['setting']} | {r['batch']} | {r['hf_caps_s']:.2f} | {r['ours_caps_s']:.2f} | {r['ratio']:.2f}x | "
              f"{r['compile_s']:.1f} | {r.get('tokens_equal', '-')} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(machine=machine, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
