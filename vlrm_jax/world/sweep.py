"""The world's RL rows over several seeds, with or without config changes: how far one run's
numbers can be trusted, and what a change does beyond the spread between seeds.

    python -m vlrm_jax.world.sweep --seeds 0 1 2                       # the runs as the demo trains them
    python -m vlrm_jax.world.sweep --seeds 0 1 2 --tag lr5e-5 --set a2c.learning_rate=5e-5

It reads a finished `make demo` (its world and four pre-trained models, which it does not train again),
trains VLRM and VLRM-RS once per seed with the demo's run builder (configs/shapes_rl.py, plus the
--set changes; two runs at a time, as the demo does), evaluates every policy with the demo's
evaluation and writes under WORKDIR/sweeps/TAG/: rl/KIND_sSEED/ (the runs), models/KIND_sSEED/
(their policies), results.json (a row per run and the base's, and each column's mean, standard
deviation, minimum and maximum over the seeds) and seeds.png (objects stated correctly against the
share naming something absent, and R@1, per run). A run whose config is unchanged is reused.
"""
from __future__ import annotations

import argparse
import ast
import json
import multiprocessing
import re
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from vlrm_jax.world import rl_runs

LABELS = rl_runs.LABELS
SPREAD_COLUMNS = ("R@1", "R@5", "MRR", "length", "objects", "positions", "absent", "correct", "grammatical",
                  "ref_logprob")
FIXED_KEYS = ("seed", "workdir")  # what the sweep itself sets per run


def apply_overrides(cfg, assignments: Sequence[str]) -> None:
    """Set `a.b.c=VALUE` entries of a run config in place. VALUE is read as a Python literal
    (numbers, strings, tuples) or else kept as text; the config's own type checks apply."""
    for text in assignments:
        key, sep, raw = text.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {text!r}: expected KEY=VALUE, e.g. a2c.learning_rate=5e-5")
        if key in FIXED_KEYS:
            raise ValueError(f"--set {text!r}: {key} is set by the sweep itself (use --seeds / --tag)")
        keys = key.split(".")
        node = cfg
        for depth, part in enumerate(keys):
            if part not in node:
                raise KeyError(f"--set {text!r}: the run config has no key {'.'.join(keys[:depth + 1])}")
            if depth < len(keys) - 1:
                node = node[part]
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        try:
            node[keys[-1]] = value
        except TypeError as err:
            raise TypeError(f"--set {text!r}: {err}") from None


def sweep_dir(root: Path, tag: str) -> Path:
    return Path(root) / "sweeps" / tag


def run_name(kind: str, seed: int) -> str:
    return f"{kind}_s{seed}"


def sweep_config(root: Path, tag: str, kind: str, seed: int, overrides: Sequence[str], smoke: bool = False):
    """The demo's run config of `kind` with the seed, the overrides and the sweep's own workdir."""
    cfg = rl_runs.run_config(root, kind, smoke)
    apply_overrides(cfg, overrides)
    cfg.seed = seed
    cfg.workdir = str(sweep_dir(root, tag) / "rl" / run_name(kind, seed))
    return cfg


def train_job(job: tuple) -> str:
    root, tag, kind, seed, overrides, smoke = job
    cfg = sweep_config(Path(root), tag, kind, seed, overrides, smoke)
    return str(rl_runs.train_and_export(cfg, sweep_dir(Path(root), tag) / "models" / run_name(kind, seed),
                                        progress=False))


def train_runs(root: Path, tag: str, kinds: Sequence[str], seeds: Sequence[int], overrides: Sequence[str],
               smoke: bool = False, processes: int = 2) -> dict[tuple[str, int], Path]:
    """Train (or reuse) every (kind, seed) run, `processes` at a time (`run_jobs`)."""
    sweep_config(Path(root), tag, kinds[0], seeds[0], overrides, smoke)  # a bad --set fails here, before any run
    jobs = [(str(root), tag, kind, seed, tuple(overrides), smoke) for seed in seeds for kind in kinds]
    return {(job[2], job[3]): folder for job, folder in zip(jobs, run_jobs(jobs, processes))}


def run_jobs(jobs: Sequence[tuple], processes: int) -> list[Path]:
    """The policy folder of each `train_job` job: `processes` at a time, each in a spawned
    process (JAX is not fork-safe), or all in this one when 1."""
    from tqdm import tqdm

    if processes <= 1:
        folders = [train_job(job) for job in tqdm(jobs, desc="RL runs", unit="run")]
    else:
        with multiprocessing.get_context("spawn").Pool(processes, maxtasksperchild=1) as pool:
            folders = list(tqdm(pool.imap(train_job, jobs), total=len(jobs), desc="RL runs", unit="run"))
    return [Path(f) for f in folders]


def value_spread(values) -> dict[str, float]:
    """mean, standard deviation (ddof 0), minimum and maximum of one column over seeds."""
    values = np.asarray(values, np.float64)
    return {"mean": float(values.mean()), "std": float(values.std()), "min": float(values.min()),
            "max": float(values.max())}


def spread(rows: dict[str, dict], kinds: Sequence[str], seeds: Sequence[int]) -> dict[str, dict]:
    """Per kind and column: mean, standard deviation (over seeds, ddof 0), minimum and maximum."""
    out = {}
    for kind in kinds:
        runs = [rows[f"{LABELS[kind]} s{seed}"] for seed in seeds]
        out[LABELS[kind]] = {}
        for column in SPREAD_COLUMNS:
            out[LABELS[kind]][column] = value_spread([r[column] for r in runs])
    return out


def plot_seeds(rows: dict[str, dict], kinds: Sequence[str], seeds: Sequence[int], path: Path, title: str) -> None:
    """Left: objects stated correctly against the share naming something absent, one point per
    run, the base's point and the base's share + 0.02; right: R@1 per seed against the base's."""
    from vlrm_jax.figure import saved_figure

    base = rows["base"]
    with saved_figure(path, 1, 2, figsize=(10, 4)) as (fig, (left, right)):
        for kind, marker in zip(kinds, "os"):
            runs = [(seed, rows[f"{LABELS[kind]} s{seed}"]) for seed in seeds]
            left.scatter([r["objects"] for _, r in runs], [r["absent"] for _, r in runs], marker=marker, label=LABELS[kind])
            for seed, r in runs:
                left.annotate(f"s{seed}", (r["objects"], r["absent"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
            right.plot(list(seeds), [r["R@1"] for _, r in runs], marker=marker, lw=1, label=LABELS[kind])
        left.scatter([base["objects"]], [base["absent"]], marker="*", s=120, color="k", label="base")
        left.axhline(base["absent"] + 0.02, color="grey", ls="--", lw=1, label="base absent + 0.02")
        left.set(xlabel="objects stated correctly (per caption)", ylabel="share naming something absent")
        right.axhline(base["R@1"], color="k", ls=":", lw=1, label="base")
        right.set(xlabel="seed", ylabel="test R@1", xticks=list(seeds))
        left.legend(fontsize=8)
        right.legend(fontsize=8)
        fig.suptitle(title, fontsize=10)


def run(root: str | Path, seeds: Sequence[int], tag: str = "config", overrides: Sequence[str] = (),
        kinds: Sequence[str] = rl_runs.KINDS, smoke: bool = False, processes: int = 2) -> dict:
    from vlrm_jax.config_utils import load_config
    from vlrm_jax.world import demo, pretrain, shapes

    root = Path(root)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", tag):
        raise ValueError(f"--tag {tag!r}: use letters, digits, '_', '.' and '-' only (it names a folder)")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds {list(seeds)}: give one or more distinct seeds")
    unknown = [k for k in kinds if k not in LABELS]
    if unknown:
        raise ValueError(f"--kinds {unknown}: expected some of {list(LABELS)}")
    wd = pretrain.Workdir(root)
    missing = [s for s in pretrain.STAGES if not (wd.model(s) / "config.json").is_file()]
    if missing or not (wd.world / "test").is_dir():
        raise FileNotFoundError(f"{root} holds no finished demo (missing: {missing or ['world/test']}); run `make demo` first")
    policies = train_runs(root, tag, kinds, seeds, overrides, smoke, processes)
    world = shapes.load_world(wd.world)
    eval_cfg = load_config("shapes", "smoke" if smoke else "")
    rows, _ = demo.evaluate(wd, world, eval_cfg,
                            {f"{LABELS[kind]} s{seed}": policies[kind, seed] for seed in seeds for kind in kinds})
    results = {"tag": tag, "overrides": list(overrides), "seeds": list(seeds), "rows": rows,
               "spread": spread(rows, kinds, seeds)}
    out = sweep_dir(root, tag)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    plot_seeds(rows, kinds, seeds, out / "seeds.png", f"{tag}: {' '.join(overrides) or 'the demo config'}")
    _report(results, out)
    return results


def _report(results: dict, out: Path) -> None:
    from vlrm_jax.eval.clip_eval import format_table

    print(format_table(results["rows"]))
    print("\nover seeds " + ", ".join(map(str, results["seeds"])) + ": mean ± std (min .. max)")
    for name, columns in results["spread"].items():
        for column in ("R@1", "objects", "absent", "grammatical"):
            s = columns[column]
            print(f"  {name:8s} {column:12s} {s['mean']:.3f} ± {s['std']:.3f} ({s['min']:.3f} .. {s['max']:.3f})")
    print(f"wrote {out / 'results.json'}, {out / 'seeds.png'}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="runs/shapes", help="a finished `make demo` workdir")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a change to configs/shapes_rl.py's runs, e.g. a2c.learning_rate=5e-5 (repeatable)")
    p.add_argument("--tag", default="", help="the sweep's folder under WORKDIR/sweeps (needed with --set)")
    p.add_argument("--kinds", nargs="+", default=list(rl_runs.KINDS), choices=list(rl_runs.KINDS))
    p.add_argument("--processes", type=int, default=2, help="runs at a time (1: all in this process)")
    p.add_argument("--smoke", action="store_true", help="the runs' smoke variants, on a `--smoke` demo")
    args = p.parse_args(argv)
    if args.overrides and not args.tag:
        p.error("--set needs --tag, the name of the sweep's folder")
    run(args.workdir, args.seeds, args.tag or "config", args.overrides, args.kinds, args.smoke, args.processes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
