"""A decode step's time with and without the CPU's table-first lm_head, in one process.

    python bench/decode_head_ab.py [--vision light] [--batch 16] [--new-tokens 30] [--rounds 5]

Builds the random BLIP2 of bench/generate_vs_hf.py and compiles sampling twice, once with
`opt.CPU_TABLE_FIRST_HEAD_ROWS` as it is (table-first up to that many rows) and once at 0 (always
`lm_head`), each at 1 and N new tokens. The four calls are timed in turn, `--rounds` times, so a
slow moment of the machine falls on both forms; ms/token is (best t(N) - best t(1)) / (N - 1).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from bench import generate_vs_hf as G  # noqa: E402


def compiled_call(cap, setting: str, n: int, pixels):
    """A jitted sampling call at n new tokens, traced now (the table-first limit is read then)."""
    from vlrm_jax.generate.search import generate_jit

    cfg = G.Bench.config(setting, n)
    # a fresh jit of the same function: generate_jit's own cache would return the first trace
    call = jax.jit(lambda state, px, key: generate_jit.__wrapped__(cap._graphdef, cfg, state, px, key).tokens)
    call(cap._state, pixels, jax.random.key(0)).block_until_ready()
    return lambda: call(cap._state, pixels, jax.random.key(0)).block_until_ready()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vision", default="light", choices=sorted(G.TOWERS))
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=30)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)

    from vlrm_jax.models import opt

    hf, cap = G.build(args.vision, False, "float32", "cpu")
    pixels = jax.device_put(G.Bench(hf, cap, "cpu", 1).pixels(args.batch)[0])
    limit = opt.CPU_TABLE_FIRST_HEAD_ROWS
    forms = {}
    for name, rows in ((f"table-first up to {limit} rows", limit), ("lm_head always", 0)):
        opt.CPU_TABLE_FIRST_HEAD_ROWS = rows
        forms[name] = [compiled_call(cap, "sample", n, pixels) for n in (1, args.new_tokens)]
    opt.CPU_TABLE_FIRST_HEAD_ROWS = limit
    best = {name: [float("inf"), float("inf")] for name in forms}
    for _ in range(args.rounds):
        for name, calls in forms.items():
            for i, call in enumerate(calls):
                t = time.perf_counter()
                call()
                best[name][i] = min(best[name][i], time.perf_counter() - t)
    n = args.new_tokens
    print(f"# {args.vision} sample B={args.batch} N={n}, best of {args.rounds} rounds, {jax.devices()[0].device_kind}")
    for name, (t1, tn) in best.items():
        print(f"{name:28s} t(1) {t1 * 1e3:6.0f} ms  t({n}) {tn * 1e3:6.0f} ms  ms/token {(tn - t1) / (n - 1) * 1e3:6.2f}")


if __name__ == "__main__":
    main()
