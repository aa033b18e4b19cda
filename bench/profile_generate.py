"""Where a generation call's time goes: XLA's own per-operation times, grouped by what each
operation produces.

    python bench/profile_generate.py [--vision light|heavy] [--setting sample|beam5] [--batch 16]
        [--new-tokens 30] [--top 30]

Builds the same random BLIP2 as bench/generate_vs_hf.py, compiles and warms one generation call,
then traces one more under `jax.profiler` with XLA's CPU operations recorded
(--xla_cpu_enable_xprof_traceme, set here before jax starts) and prints, per kind of operation and
output shape, the milliseconds summed over the call and that divided by N - 1 (per decoded token,
for the operations of the decode loop). Shapes name the part: (B, 257, ...) the ViT at 224 px,
(B * 33, ...) the prefill, (rows, vocabulary) the lm_head and sampling, (rows, width) a decode
step's layer products.
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true").strip()
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from bench import generate_vs_hf as G  # noqa: E402


def op_table(hlo_text: str) -> dict[str, str]:
    """{instruction name: "op output-shape"} of a compiled HLO module's text."""
    table = {}
    for line in hlo_text.splitlines():
        m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (\S+) ([\w\-]+)\(", line)
        if m:
            table[m.group(1)] = f"{m.group(3)} {m.group(2).split('{')[0]}"
    return table


def traced_ms(trace_dir: str) -> collections.Counter:
    """Milliseconds per traced event name, summed, from the perfetto trace jax.profiler wrote."""
    path = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)[0]
    events = json.load(gzip.open(path))
    events = events["traceEvents"] if isinstance(events, dict) else events
    total = collections.Counter()
    for e in events:
        if e.get("ph") == "X":
            total[e["name"]] += e["dur"] / 1e3
    return total


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vision", default="light", choices=sorted(G.TOWERS))
    p.add_argument("--setting", default="sample", choices=sorted(G.SETTINGS))
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=30)
    p.add_argument("--top", type=int, default=30, help="rows of the table")
    args = p.parse_args(argv)

    from vlrm_jax.generate.search import generate_jit

    hf, cap = G.build(args.vision, False, "float32", "cpu")
    pixels = jax.device_put(G.Bench(hf, cap, "cpu", 1).pixels(args.batch)[0])
    cfg = G.Bench.config(args.setting, args.new_tokens)
    inputs = (cap._graphdef, cfg, cap._state, pixels, jax.random.key(0))

    def call():
        return jax.block_until_ready(generate_jit(*inputs).tokens)

    call()
    t = time.perf_counter()
    call()
    seconds = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            call()
        times = traced_ms(trace_dir)
    ops = op_table(generate_jit.lower(*inputs).compile().as_text())
    grouped = collections.Counter()
    for name, ms in times.items():
        if name in ops:
            grouped[ops[name]] += ms
    steps = max(args.new_tokens - 1, 1)
    print(f"# {args.vision} {args.setting} B={args.batch} N={args.new_tokens}: one call {seconds * 1e3:.0f} ms "
          f"(untraced), XLA operations {sum(grouped.values()):.0f} ms (traced)")
    print("| operation and output | ms per call | ms / (N - 1): a decode op's cost per token |\n|---|---|---|")
    for what, ms in grouped.most_common(args.top):
        print(f"| {what} | {ms:.1f} | {ms / steps:.2f} |")


if __name__ == "__main__":
    main()
