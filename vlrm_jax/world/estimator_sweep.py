"""The estimators compared on the shapes world: VLRM trained from the demo's pre-trained models
by each estimator (and option) over several seeds, every run sampling the same number of
captions, evaluated as the demo evaluates.

    python -m vlrm_jax.world.estimator_sweep --seeds 0 1 2                      # every variant
    python -m vlrm_jax.world.estimator_sweep --seeds 0 1 2 --estimators a2c grpo a2c_kl
    make sweep ESTIMATORS="a2c grpo a2c_kl"

Each variant is a set of config changes to configs/shapes_rl.py's VLRM run (`VARIANTS`); the
grouped estimators take batch_size / group_size images per step, so every run rolls out 64
captions per step for the same number of steps. Runs go under WORKDIR/sweeps/est-NAME/ (as
`vlrm_jax.world.sweep` lays them out, and reused the same way), two at a time; the table
(WORKDIR/sweeps/estimators/results.json and .md) has per variant the mean and spread over seeds
of R@1, objects stated correctly, the absent share, the grammatical share and the reference
log-probability, with the captions sampled, the training seconds (sum of the logged step times,
compiles excluded, two runs sharing the machine) and at how many seeds R@1 beat the base's;
estimators.png plots R@1 per seed against the training seconds, and the absent share against R@1.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from vlrm_jax.rl.estimators import ESTIMATORS
from vlrm_jax.world import sweep

GROUP = 4  # captions per image of the grouped estimators
PPO = ("a2c.minibatches=2", "a2c.clip_eps=0.2")


def _grouped(name: str, batch: int = 64) -> tuple[str, ...]:
    return (f"a2c.estimator={name}", f"a2c.group_size={GROUP}", f"batch_size={batch // GROUP}")


# name -> config changes (KEY=VALUE as `make sweep SET=...` takes them) for a batch of 64 captions
VARIANTS = {
    "a2c": (),
    "scst": ("a2c.estimator=scst",),
    "rloo": _grouped("rloo"),
    "grpo": _grouped("grpo"),
    "drgrpo": _grouped("drgrpo"),
    "a2c_ppo2": ("a2c.epochs=2",) + PPO,
    "a2c_ppo4": ("a2c.epochs=4",) + PPO,
    "grpo_ppo2": _grouped("grpo") + ("a2c.epochs=2",) + PPO,
    "grpo_ppo4": _grouped("grpo") + ("a2c.epochs=4",) + PPO,
    "a2c_kl": ("a2c.kl_coef=0.1",),
}
COLUMNS = ("R@1", "objects", "absent", "grammatical", "ref_logprob")


def variant_overrides(name: str, smoke: bool = False) -> tuple[str, ...]:
    if name not in VARIANTS:
        raise ValueError(f"estimator variant {name!r}: expected some of {list(VARIANTS)}")
    changes = VARIANTS[name]
    if smoke:  # the smoke runs roll out 16 captions per step
        changes = tuple(f"batch_size={16 // GROUP}" if c.startswith("batch_size=") else c for c in changes)
    return changes


def tag(name: str) -> str:
    return f"est-{name}"


def run_log(folder: Path) -> tuple[int, float]:
    """(captions sampled, training seconds) of a finished run's metrics.jsonl."""
    from vlrm_jax.rl.run_config import RUN_CONFIG

    cfg = json.loads((folder / RUN_CONFIG).read_text())["config"]
    grouped = ESTIMATORS[cfg["a2c"]["estimator"]].grouped
    per_step = cfg["batch_size"] * (cfg["a2c"]["group_size"] if grouped else 1)
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [m for m in lines if "time/step_s" in m]
    return per_step * len(steps), float(sum(m["time/step_s"] for m in steps))


def summarise(rows: dict, logs: dict, names: Sequence[str], seeds: Sequence[int]) -> dict:
    """Per variant: each column's mean, std (ddof 0), min and max over seeds; captions sampled,
    mean training seconds, and at how many seeds R@1 beat the base's."""
    base = rows["base"]["R@1"]
    out = {}
    for name in names:
        runs = [rows[f"{name} s{seed}"] for seed in seeds]
        entry = {}
        for column in COLUMNS:
            entry[column] = sweep.value_spread([r[column] for r in runs])
        captions, seconds = zip(*(logs[name, seed] for seed in seeds))
        entry["captions_sampled"] = int(captions[0])
        entry["train_s"] = float(np.mean(seconds))
        entry["seeds_above_base"] = int(sum(r["R@1"] > base for r in runs))
        out[name] = entry
    return out


def markdown(summary: dict, base: dict, seeds: Sequence[int]) -> str:
    head = ("| variant | R@1 | objects | absent | grammatical | ref log-prob | captions sampled | train s | "
            f"R@1 > base ({len(seeds)} seeds) |")
    lines = [head, "|" + "---|" * 9,
             f"| base | {base['R@1']:.3f} | {base['objects']:.2f} | {base['absent']:.3f} | {base['grammatical']:.3f} | "
             f"{base['ref_logprob']:.2f} | - | - | - |"]
    for name, e in summary.items():
        cell = lambda c, f: f"{e[c]['mean']:{f}} ± {e[c]['std']:{f}}"  # noqa: E731
        lines.append(f"| {name} | {cell('R@1', '.3f')} | {cell('objects', '.2f')} | {cell('absent', '.3f')} | "
                     f"{cell('grammatical', '.3f')} | {cell('ref_logprob', '.2f')} | {e['captions_sampled']} | "
                     f"{e['train_s']:.0f} | {e['seeds_above_base']} |")
    return "\n".join(lines) + "\n"


def plot(rows: dict, logs: dict, names: Sequence[str], seeds: Sequence[int], path: Path) -> None:
    """Left: R@1 per run against its training seconds, the base's R@1 a line; right: the share
    of captions naming something absent against R@1, the base a star."""
    from vlrm_jax.figure import saved_figure

    base = rows["base"]
    with saved_figure(path, 1, 2, figsize=(11, 4.5)) as (fig, (left, right)):
        for i, name in enumerate(names):
            runs = [rows[f"{name} s{seed}"] for seed in seeds]
            colour, marker = f"C{i % 10}", "os^Dv"[i // 10 % 5]
            left.scatter([logs[name, s][1] for s in seeds], [r["R@1"] for r in runs], color=colour, marker=marker,
                         label=name)
            right.scatter([r["R@1"] for r in runs], [r["absent"] for r in runs], color=colour, marker=marker)
        left.axhline(base["R@1"], color="k", ls=":", lw=1, label="base")
        right.scatter([base["R@1"]], [base["absent"]], marker="*", s=140, color="k")
        left.set(xlabel="training seconds (2-core CPU, two runs at a time)", ylabel="test R@1")
        right.set(xlabel="test R@1", ylabel="share naming something absent")
        left.legend(fontsize=7, ncol=2)
        fig.suptitle(f"VLRM on the shapes world by estimator, seeds {', '.join(map(str, seeds))}", fontsize=10)


def run(root: str | Path, seeds: Sequence[int], names: Sequence[str] = tuple(VARIANTS), smoke: bool = False,
        processes: int = 2) -> dict:
    from vlrm_jax.config_utils import load_config
    from vlrm_jax.world import demo, pretrain, shapes

    root = Path(root)
    for name in names:
        sweep.sweep_config(root, tag(name), "vlrm", seeds[0], variant_overrides(name, smoke), smoke)  # fail early
    jobs = [(str(root), tag(name), "vlrm", seed, variant_overrides(name, smoke), smoke) for seed in seeds
            for name in names]
    folders = sweep.run_jobs(jobs, processes)
    policies = {f"{job[1].removeprefix('est-')} s{job[3]}": folder for job, folder in zip(jobs, folders)}
    logs = {(name, seed): run_log(sweep.sweep_dir(root, tag(name)) / "rl" / sweep.run_name("vlrm", seed))
            for name in names for seed in seeds}
    wd = pretrain.Workdir(root)
    rows, _ = demo.evaluate(wd, shapes.load_world(wd.world), load_config("shapes", "smoke" if smoke else ""), policies)
    summary = summarise(rows, logs, names, seeds)
    out = sweep.sweep_dir(root, "estimators")
    out.mkdir(parents=True, exist_ok=True)
    results = {"seeds": list(seeds), "variants": {n: list(variant_overrides(n, smoke)) for n in names},
               "rows": rows, "summary": summary}
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    table = markdown(summary, rows["base"], seeds)
    (out / "results.md").write_text(table)
    plot(rows, logs, names, seeds, out / "estimators.png")
    print(table + f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'estimators.png'}")
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="runs/shapes", help="a finished `make demo` workdir")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--estimators", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--processes", type=int, default=2, help="runs at a time (1: all in this process)")
    p.add_argument("--smoke", action="store_true", help="the runs' smoke variants, on a `--smoke` demo")
    args = p.parse_args(argv)
    run(args.workdir, args.seeds, args.estimators, args.smoke, args.processes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
