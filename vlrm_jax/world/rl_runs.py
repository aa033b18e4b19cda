"""The world's RL rows: VLRM and VLRM-RS trained on the pre-trained world by the same run builder,
step and loop as `python main.py --config=configs/shapes_rl.py:KIND`, then exported as captioner
folders (models/vlrm, models/vlrm_rs) that the demo's evaluation reads like the base captioner.

A run whose workdir holds a finished run of the same config is not trained again (the loop
resumes at its last step and stops); a workdir of another config is cleared first.
"""
from __future__ import annotations

import json
import multiprocessing
import shutil
from pathlib import Path

from vlrm_jax.config_utils import load_config

KINDS = ("vlrm", "vlrm_rs")
LABELS = {"vlrm": "VLRM", "vlrm_rs": "VLRM-RS"}  # the rows of the demo's table
CONFIG_ROOT = Path("runs/shapes")  # the root configs/shapes_rl.py names; moved to the demo's workdir


def run_config(root: Path, kind: str, smoke: bool):
    cfg = load_config("shapes_rl", f"{kind}_smoke" if smoke else kind)

    def move(path: str) -> str:
        return str(Path(root) / Path(path).relative_to(CONFIG_ROOT)) if path else path

    cfg.workdir = move(cfg.workdir)
    for key in ("captioner", "itm", "ref_lm", "clip"):
        cfg.model[key] = move(cfg.model[key])
    cfg.data.source, cfg.eval.source, cfg.eval.clip = move(cfg.data.source), move(cfg.eval.source), move(cfg.eval.clip)
    return cfg


MODELS_FILE = "pretrained_models.json"


def _models_fingerprint(cfg) -> dict:
    """The pre-training record (stage hash) of every model folder a run reads: a retrained model
    makes an older RL run stale."""
    out = {}
    for key in ("captioner", "itm", "ref_lm", "clip"):
        folder = cfg.model[key]
        record = Path(folder) / "pretrain.json" if folder else None
        out[key] = json.loads(record.read_text()).get("hash") if record and record.is_file() else None
    return out


def policy_dir(root: Path, kind: str) -> Path:
    return Path(root) / "models" / kind


def train_policy(root: Path, kind: str, smoke: bool, progress: bool = True) -> Path:
    """Train (or resume, or reuse) one of the demo's RL runs and export its policy; returns the policy folder."""
    return train_and_export(run_config(root, kind, smoke), policy_dir(root, kind), progress)


def train_and_export(cfg, policy: Path, progress: bool = True) -> Path:
    """Train (or resume, or reuse) the run `cfg` describes and export its policy to `policy`."""
    from vlrm_jax.rl import run, run_config
    from vlrm_jax.rl.export import export

    workdir = Path(cfg.workdir)
    saved, models = workdir / run_config.RUN_CONFIG, workdir / MODELS_FILE
    fingerprint = _models_fingerprint(cfg)
    if saved.is_file() and (json.loads(saved.read_text())["config"] != json.loads(cfg.to_json())
                            or not models.is_file() or json.loads(models.read_text()) != fingerprint):
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    models.write_text(json.dumps(fingerprint, indent=1, sort_keys=True) + "\n")
    run.train(cfg, progress=progress)
    export(str(workdir), str(policy), overwrite=True)
    return Path(policy)


def _child(root: str, kind: str, smoke: bool) -> None:
    train_policy(Path(root), kind, smoke, progress=False)


def train_all(root: Path, smoke: bool, parallel: bool = True) -> dict[str, Path]:
    """VLRM in this process, VLRM-RS beside it in a spawned one (JAX is not fork-safe): each
    small XLA graph keeps about one of the two cores busy."""
    child = None
    if parallel:
        child = multiprocessing.get_context("spawn").Process(target=_child, args=(str(root), "vlrm_rs", smoke))
        child.start()
    out = {"vlrm": train_policy(root, "vlrm", smoke)}
    if child is not None:
        child.join()
        if child.exitcode != 0:
            raise RuntimeError(f"the VLRM-RS run failed (exit code {child.exitcode}); see {run_config(root, 'vlrm_rs', smoke).workdir}")
        out["vlrm_rs"] = policy_dir(root, "vlrm_rs")
    else:
        out["vlrm_rs"] = train_policy(root, "vlrm_rs", smoke)
    return out


def training_curves(root: Path, smoke: bool) -> dict[str, list[dict]]:
    """metrics.jsonl of each run (training lines and evaluation lines)."""
    curves = {}
    for kind in KINDS:
        path = Path(run_config(root, kind, smoke).workdir) / "metrics.jsonl"
        curves[kind] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return curves


def plot_training(curves: dict[str, list[dict]], path: Path) -> None:
    """Reward parts, caption length and held-out R@1 over the training steps of both runs."""
    from vlrm_jax.figure import saved_figure

    panels = [("reward/mean", "reward"), ("reward/sim", "ITM sim"), ("reward/ref", "ref log-prob"),
              ("caption/length", "sampled length (tokens)"), ("eval/R@1", "test R@1 (beam 5)")]
    with saved_figure(path, 1, len(panels), figsize=(4 * len(panels), 3.2)) as (_, axes):
        for ax, (key, title) in zip(axes, panels):
            for kind, rows in curves.items():
                points = [(r["step"], r[key]) for r in rows if key in r]
                if points:
                    steps, values = zip(*points)
                    ax.plot(steps, values, marker="o" if key.startswith("eval/") else None, lw=1, label=kind)
            ax.set(title=title, xlabel="step")
        axes[0].legend()
