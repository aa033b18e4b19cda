"""Peak memory of a conversion: a random fp32 model converted by the CLI.

    python bench/convert_memory.py [--gb 3.6] [--workdir /tmp/convert_memory]     # an OPT of ~--gb GB
    python bench/convert_memory.py --model blip2-opt-2.7b [--workdir DIR]         # full BLIP2, 15.5 GB

Prints the source size, the wall time and the converter process's peak resident memory. The
converter streams (convert.table.iter_torch_to_flax into save_params): it holds the parameter
being converted and the write group being saved (about 1 GB, or one bigger stacked array),
not the model.
"""
from __future__ import annotations

import argparse
import os
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


def make_blip2_source(path: str) -> None:
    """BLIP2-OPT-2.7B at its released shapes, random fp32 weights (built and saved in this
    process, which exits before the converter starts)."""
    import torch
    from transformers import Blip2ForConditionalGeneration

    from convert import released_shapes

    torch.manual_seed(0)
    Blip2ForConditionalGeneration(released_shapes.blip2_opt_2_7b()).save_pretrained(path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=("opt", "blip2-opt-2.7b"), default="opt")
    p.add_argument("--gb", type=float, default=3.6, help="size of the random OPT (--model opt)")
    p.add_argument("--workdir", default="/tmp/convert_memory")
    args = p.parse_args(argv)
    src, dst = os.path.join(args.workdir, "hf"), os.path.join(args.workdir, "jax")
    if not os.path.exists(os.path.join(src, "config.json")):
        t = time.time()
        if args.model == "opt":
            make_source(src, args.gb)
        else:
            # A separate process: its ~16 GB are given back before the converter is measured.
            subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {REPO!r}); "
                            f"from bench.convert_memory import make_blip2_source; make_blip2_source({src!r})"],
                           check=True)
        print(f"wrote the random source in {time.time() - t:.0f} s")
    shutil.rmtree(dst, ignore_errors=True)
    size = sum(os.path.getsize(os.path.join(src, f)) for f in os.listdir(src) if f.endswith(".safetensors"))
    t = time.time()
    module = "convert.opt" if args.model == "opt" else "convert.blip2"
    # The converter reports its own peak: RUSAGE_CHILDREN would also count the source writer.
    run = (f"import atexit, resource, runpy, sys; "
           f"atexit.register(lambda: print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)); "
           f"sys.argv = ['{module}', '--src', {src!r}, '--dst', {dst!r}, '--quiet']; "
           f"runpy.run_module('{module}', run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", run], cwd=REPO, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(proc.stderr)
    peak = int(proc.stderr.rsplit("PEAK_KB", 1)[1].split()[0]) * 1024
    print(f"{args.model}: source {size / 1e9:.2f} GB fp32 -> converted in {time.time() - t:.1f} s, "
          f"converter peak RSS {peak / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
