"""Peak memory of a conversion: a random OPT of about --gb GB (fp32) converted by the CLI.

    python bench/convert_memory.py [--gb 3.6] [--workdir /tmp/convert_memory]

Prints the source size, the wall time and the converter process's peak resident memory. The
converter holds the converted parameters plus one source tensor plus about one 1 GB write group,
so peak ~ output + 1 GB + the Python/JAX baseline (~0.9 GB).
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_source(path: str, gb: float) -> None:
    from transformers import OPTConfig, OPTForCausalLM

    hidden, ffn, vocab = 2048, 8192, 50272
    per_layer = 4 * hidden * hidden + 2 * hidden * ffn
    layers = max(1, round((gb * 1e9 / 4 - vocab * hidden) / per_layer))
    cfg = OPTConfig(vocab_size=vocab, hidden_size=hidden, ffn_dim=ffn, num_hidden_layers=layers, num_attention_heads=32,
                    word_embed_proj_dim=hidden, max_position_embeddings=2048)
    OPTForCausalLM(cfg).save_pretrained(path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--gb", type=float, default=3.6)
    p.add_argument("--workdir", default="/tmp/convert_memory")
    args = p.parse_args(argv)
    src, dst = os.path.join(args.workdir, "hf"), os.path.join(args.workdir, "jax")
    if not os.path.exists(os.path.join(src, "config.json")):
        make_source(src, args.gb)
    shutil.rmtree(dst, ignore_errors=True)
    size = sum(os.path.getsize(os.path.join(src, f)) for f in os.listdir(src) if f.endswith(".safetensors"))
    t = time.time()
    proc = subprocess.run([sys.executable, "-m", "convert.opt", "--src", src, "--dst", dst, "--quiet"], cwd=REPO,
                          capture_output=True, text=True)
    if proc.returncode:
        sys.exit(proc.stderr)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    print(f"source {size / 1e9:.2f} GB fp32 -> converted in {time.time() - t:.1f} s, converter peak RSS {peak / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
