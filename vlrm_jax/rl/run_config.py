"""The config a workdir was trained with, and what a resume may change of it.

`save_run_config` keeps WORKDIR/run_config.json (export reads it). A start on a workdir that
already holds a complete checkpoint and that file compares the two configs before anything is
built (`check_resume`): a changed key that changes what is trained refuses the start (main.py
exits 2) unless the change is allowed explicitly; an allowed change is appended to
WORKDIR/config_history.jsonl, a file only ever appended to, so the settings the first steps ran
under stay on record once run_config.json holds the new config. Keys that only say how the run
is operated (OPERATIONAL_KEYS) change freely. With several processes process 0 decides (the
workdir may be local to its host) and every process takes its verdict.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

from vlrm_jax.config_utils import flatten

RUN_CONFIG = "run_config.json"
CONFIG_HISTORY = "config_history.jsonl"
ABSENT = "<absent>"  # shown for a key that one of the two configs lacks

# Keys (a section: every key under it) that say how a run is operated, not what it trains: a
# resume may change them freely.
OPERATIONAL_KEYS = (
    "total_steps",  # extending a run is the normal way to continue it
    "distributed",  # the coordinator and the process id differ per process and per job
    "progress", "log_every", "samples_every", "num_samples", "eval_every",  # what is reported, how often
    "checkpoint_every", "keep_checkpoints",  # how often the state is saved, how many saves stay
    "workdir", "checkpoint_dir",  # where the run writes (the same folders, spelled or mounted otherwise)
    "data.workers",  # decoding threads: the images keep their order whatever their number
)


class ConfigChanged(ValueError):
    """A resume under a config that trains otherwise than the saved one, not allowed."""


@dataclasses.dataclass(frozen=True)
class Resume:
    """What a start finds in its workdir. step: the checkpoint it resumes from (None: a fresh
    start); changes: {key: [saved value, new value]} of the keys that change the training;
    unreadable: why the saved config could not be compared ("" when it could)."""

    step: int | None = None
    changes: dict = dataclasses.field(default_factory=dict)
    unreadable: str = ""

    @property
    def differs(self) -> bool:
        return bool(self.changes or self.unreadable)


def save_run_config(cfg, captioner_dir: str) -> None:
    """The config a workdir is trained with, beside its checkpoints (export reads it); written by
    process 0 only, replaced whole (a kill mid-write leaves the previous file)."""
    from vlrm_jax import distributed

    if not distributed.is_main():
        return
    workdir = Path(cfg.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    record = {"config": json.loads(cfg.to_json()), "captioner_dir": str(Path(captioner_dir).absolute())}
    partial = workdir / f"{RUN_CONFIG}.tmp"
    partial.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    os.replace(partial, workdir / RUN_CONFIG)


def is_operational(key: str) -> bool:
    return any(key == name or key.startswith(f"{name}.") for name in OPERATIONAL_KEYS)


def training_changes(saved: dict, new: dict) -> dict[str, list]:
    """{dotted key: [saved value, new value]} of the keys outside OPERATIONAL_KEYS whose values
    differ (ABSENT for a key one side lacks), sorted by key; both configs as JSON dicts."""
    old, now = flatten(saved), flatten(new)
    changes = {}
    for key in sorted(set(old) | set(now)):
        pair = [old.get(key, ABSENT), now.get(key, ABSENT)]
        if pair[0] != pair[1] and not is_operational(key):
            changes[key] = pair
    return changes


def latest_complete_step(cfg) -> int | None:
    """The newest complete checkpoint (orbax's finalised step folders, as the loop restores),
    listed without a CheckpointManager: no collective, so process 0 may ask alone."""
    import orbax.checkpoint as ocp

    from vlrm_jax.rl.checkpoint import checkpoint_location

    return max(ocp.utils.checkpoint_steps(checkpoint_location(cfg.workdir, cfg.checkpoint_dir)), default=None)


def inspect_workdir(cfg) -> Resume:
    """The checkpoint this start resumes from and the training keys it changes against the
    saved run_config.json (none to compare on a fresh start or without that file)."""
    step = latest_complete_step(cfg)
    path = Path(cfg.workdir) / RUN_CONFIG
    if step is None or not path.is_file():
        return Resume(step)
    try:
        saved = json.loads(path.read_text())["config"]
        return Resume(step, training_changes(saved, json.loads(cfg.to_json())))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return Resume(step, unreadable=f"{path} cannot be read: {e!r}")


def _verdict(cfg, allow_change: bool) -> dict:
    """Process 0's decision, as JSON for the others. A failure to read the workdir is shared as
    a refusal, never raised here alone: the other processes would wait for it in the collective."""
    try:
        resume = inspect_workdir(cfg)
    except Exception as e:  # noqa: BLE001 - every kind of failure must reach the other processes
        resume = Resume(unreadable=f"{cfg.workdir} cannot be read: {e!r}")
    return {"resume": dataclasses.asdict(resume), "refused": resume.differs and not allow_change}


def check_resume(cfg, allow_change: bool) -> Resume:
    """Process 0's reading of the workdir, taken by every process (with several, a collective
    that all call at the same point). Raises ConfigChanged, naming every changed key with its
    saved and new value, when the training would change and allow_change is False."""
    from vlrm_jax import distributed

    verdict = distributed.allgather_json(_verdict(cfg, allow_change) if distributed.is_main() else None)[0]
    resume = Resume(**verdict["resume"])
    if verdict["refused"]:
        raise ConfigChanged(describe_change(cfg, resume))
    return resume


def describe_change(cfg, resume: Resume) -> str:
    """What differs, one changed key per line: `key: old -> new`."""
    path = Path(cfg.workdir) / RUN_CONFIG
    if resume.unreadable:
        return f"the config cannot be compared with the one the checkpoints were trained with: {resume.unreadable}"
    lines = [f"  {key}: {json.dumps(old)} -> {json.dumps(new)}" for key, (old, new) in resume.changes.items()]
    return (f"the run in {cfg.workdir} was trained to step {resume.step} under another config ({path}); "
            "these keys change the training:\n" + "\n".join(lines))


def append_history(cfg, resume: Resume) -> None:
    """One JSON line in WORKDIR/config_history.jsonl for a start that resumes under changed
    training keys: the step, the UTC time and each key's old and new value. Process 0 only;
    the file is only ever appended to."""
    from vlrm_jax import distributed

    if not resume.differs or not distributed.is_main():
        return
    line = {"resumed_from_step": resume.step, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "changes": {key: {"old": old, "new": new} for key, (old, new) in resume.changes.items()}}
    if resume.unreadable:
        line["unreadable"] = resume.unreadable
    Path(cfg.workdir).mkdir(parents=True, exist_ok=True)
    with (Path(cfg.workdir) / CONFIG_HISTORY).open("a") as f:
        f.write(json.dumps(line, sort_keys=True) + "\n")
