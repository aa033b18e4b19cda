"""ms per decoded token against the two bounds, from generate_vs_hf.py result files: one PNG.

    python bench/plot_generate_sweep.py OUT.png RESULT.json [RESULT.json ...] [--after RESULT.json ...]

x: rows decoded per step (B for sampling, 5 B for beam search), y: ms per token. Points are the
measured steps of every file (both towers, every N); lines are the bandwidth bound, twice it, and
the compute bound at N = 30, taken from the files' own rows. `--after` files are drawn with
another marker (a later code version, named in the legend).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vlrm_jax.figure import saved_figure  # noqa: E402


def rows_of(paths) -> list[dict]:
    return [row for path in paths for row in json.loads(Path(path).read_text())["rows"] if row.get("ms_per_token")]


def bounds_at(rows: list[dict], n: int = 30) -> dict[int, tuple[float, float]]:
    """{decode rows: (bandwidth bound, compute bound)} at n new tokens, the smallest of the files
    (the best measured bandwidth and peak)."""
    out = {}
    for row in rows:
        if row["new_tokens"] == n:
            got = (row["bound_ms_per_token"], row["compute_ms_per_token"])
            old = out.get(row["decode_rows"], got)
            out[row["decode_rows"]] = (min(old[0], got[0]), min(old[1], got[1]))
    return dict(sorted(out.items()))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("results", nargs="+")
    p.add_argument("--after", nargs="*", default=[], help="results of a later code version")
    p.add_argument("--after-label", default="after")
    args = p.parse_args(argv)
    before, after = rows_of(args.results), rows_of(args.after)
    bounds = bounds_at(before + after)
    x = list(bounds)
    with saved_figure(Path(args.out), figsize=(7, 4.5)) as (fig, ax):
        colors = {("o", "sample"): "tab:blue", ("o", "beam5"): "tab:orange", ("^", "sample"): "tab:green",
                  ("^", "beam5"): "tab:purple"}
        for rows, marker, label in ((before, "o", "measured"), (after, "^", args.after_label)):
            for setting in ("sample", "beam5"):
                pts = [(r["decode_rows"], r["ms_per_token"]) for r in rows if r["setting"] == setting]
                if pts:
                    ax.scatter(*zip(*pts), marker=marker, s=18, color=colors[marker, setting], alpha=0.6,
                               label=f"{label}: {'sampling' if setting == 'sample' else 'beam 5'}")
        ax.plot(x, [bounds[r][0] for r in x], "k-", label="bandwidth bound (weights + cache at copy bandwidth)")
        ax.plot(x, [2 * bounds[r][0] for r in x], "k--", label="2 x bandwidth bound")
        ax.plot(x, [bounds[r][1] for r in x], "r-", label="compute bound (FLOPs at the matmul peak)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(x)
        ax.set_xticklabels([str(r) for r in x])
        ax.set_xlabel("rows decoded per step")
        ax.set_ylabel("ms per decoded token")
        ax.legend(fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
