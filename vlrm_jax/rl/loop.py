"""The training loop: a thin driver around the trainer's jitted step (`A2CStep.step`).

Per step: the next batch of the data stream, one jitted step, metrics to `metrics.jsonl` and
TensorBoard (`tb/`), every `samples_every` steps a table of sampled captions with their reward
parts (`samples/STEP.jsonl` and TensorBoard text), every `eval_every` steps and at the end the
evaluation hook, every `checkpoint_every` steps an asynchronous checkpoint of the whole state and
the data position. Started again on the same workdir it resumes from the latest complete
checkpoint and first drops the metric lines written after it, so the file never holds a step
twice. SIGTERM (preemption) is honoured at the next step boundary: checkpoint, wait, return.

With several processes (vlrm_jax.distributed) every process runs this loop in step: each feeds its
own rows of the batch and takes part in every checkpoint; the record holds every process's data
position; process 0 alone writes metrics, TensorBoard and samples and shows the progress bar.
"""
from __future__ import annotations

import dataclasses
import json
import signal
import time
from pathlib import Path
from typing import Callable

import jax
import numpy as np
from absl import logging
from tqdm.auto import tqdm

from vlrm_jax import distributed
from vlrm_jax.metrics import ScalarLog
from vlrm_jax.rl.checkpoint import CHECKPOINT_URLS, Checkpoints, checkpoint_location, is_url
from vlrm_jax.rl.sections import ConfigError, at_least
from vlrm_jax.rl.step import A2CStep
from vlrm_jax.rl.state import TrainState

METRICS_FILE = "metrics.jsonl"


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """The run config's top-level keys that drive the loop (and the run's seed and batch)."""

    workdir: str  # metrics, samples, TensorBoard, run config: a local or mounted folder
    total_steps: int
    checkpoint_dir: str = ""  # "": WORKDIR/checkpoints; a gs:// URL on pods
    checkpoint_every: int = 100
    log_every: int = 1
    keep_checkpoints: int = 3
    max_skips_in_row: int = 10  # this many non-finite updates in a row stop the run
    samples_every: int = 0  # 0: no sample tables
    num_samples: int = 8
    eval_every: int = 0  # 0: evaluate only at the end (when an evaluator is given)
    progress: bool = True
    seed: int = 0
    batch_size: int = 1  # the rollout batch of one update

    def __post_init__(self):
        at_least(self, 1, "total_steps", "checkpoint_every", "log_every", "keep_checkpoints", "max_skips_in_row",
                 "num_samples", "batch_size")
        at_least(self, 0, "samples_every", "eval_every", "seed")
        if is_url(self.workdir):
            raise ConfigError("workdir", f"{self.workdir!r}: metrics, samples and TensorBoard are written through "
                                         "local paths; use a local or mounted (NFS, gcsfuse) folder, and "
                                         "checkpoint_dir=gs://... for the checkpoints")
        if is_url(self.checkpoint_dir) and not self.checkpoint_dir.startswith(CHECKPOINT_URLS):
            raise ConfigError("checkpoint_dir", f"{self.checkpoint_dir!r}: expected a folder or a URL starting with "
                                                f"one of {CHECKPOINT_URLS}")


@dataclasses.dataclass(frozen=True)
class Hooks:
    """What the loop calls besides the step. decode: token ids (R, T) -> caption strings;
    evaluate: (state, step) -> {name: value} (e.g. CLIP Recall on held-out images)."""

    decode: Callable | None = None
    evaluate: Callable | None = None


class StopRequest:
    """Set by SIGTERM; the loop polls it between steps (a signal never interrupts a step)."""

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def restore(self):
        signal.signal(signal.SIGTERM, self._previous)

    def agreed(self) -> bool:
        """Whether any process was asked to stop: all of them then stop at the same step (a
        collective with several processes, so every process asks at the same points)."""
        if jax.process_count() == 1:
            return self.requested
        return any(distributed.allgather_json(self.requested))


class MetricsFile:
    """One JSON object per logged step, appended and flushed at once (a crash loses nothing
    written before it)."""

    def __init__(self, path: Path):
        self.path = path

    def truncate_after(self, step: int) -> None:
        """Drop lines of steps after `step` (written after the checkpoint a run resumes from)."""
        if not self.path.exists():
            return
        lines = [ln for ln in self.path.read_text().splitlines() if ln.strip()]
        keep = [ln for ln in lines if json.loads(ln)["step"] <= step]
        self.path.write_text("".join(ln + "\n" for ln in keep))

    def append(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")


class TooManySkips(RuntimeError):
    pass


class CheckpointError(RuntimeError):
    """A checkpoint could not be written (disk full, read-only, ...); the ones before it stand."""


def _save(checkpoints: Checkpoints, step: int, state, record: dict) -> None:
    try:
        checkpoints.save(step, state, record)
    except Exception as e:  # noqa: BLE001 - any failure to write is reported the same way
        raise CheckpointError(f"could not write checkpoint {step} under {checkpoints.directory}: {e}; "
                              f"the last complete checkpoint is step {checkpoints.latest_step()}") from e


def _wait(checkpoints: Checkpoints) -> None:
    """An asynchronous save's error surfaces here, never swallowed."""
    try:
        checkpoints.wait()
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"an asynchronous checkpoint write under {checkpoints.directory} failed: {e}; "
                              f"the last complete checkpoint is step {checkpoints.latest_step()}") from e


def _scalars(metrics) -> dict[str, float]:
    return {name: float(np.asarray(v)) for name, v in jax.device_get(metrics).items()}


class _NoLog:
    """What the processes other than 0 log to: nothing."""

    def scalar(self, *args) -> None:
        pass

    def text(self, *args) -> None:
        pass

    def close(self) -> None:
        pass


def _resume_data_state(record: dict):
    """This process's data position from a checkpoint record (every process's is kept)."""
    states = record.get("data_states")
    if states is not None and len(states) == jax.process_count():
        return states[jax.process_index()]
    if states is not None or jax.process_count() > 1:
        logging.warning("checkpoint written by %s processes, resumed by %d: every process continues from "
                        "process 0's data position", len(states) if states else 1, jax.process_count())
    return record["data_state"]


def write_samples(workdir: Path, step: int, samples, decode, n: int, tb: ScalarLog) -> list[dict]:
    """The first n captions of the step with their reward parts: samples/STEP.jsonl and TB text.
    Every process must call it (the captions are gathered); process 0 writes."""
    host = {name: np.asarray(v)[:n] for name, v in distributed.gather(samples).items()}
    if not distributed.is_main():
        return []
    tokens = host.pop("tokens")
    texts = decode(tokens) if decode is not None else [" ".join(map(str, row)) for row in tokens]
    rows = [{"caption": texts[i], **{name: float(v[i]) for name, v in host.items()}} for i in range(len(tokens))]
    folder = workdir / "samples"
    folder.mkdir(exist_ok=True)
    (folder / f"{step:08d}.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    names = sorted(host)
    table = ["| caption | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    table += ["| " + r["caption"].replace("|", "/") + " | " + " | ".join(f"{r[k]:.3f}" for k in names) + " |" for r in rows]
    tb.text("samples", "\n".join(table), step)
    return rows


def train(trainer: A2CStep, stream, cfg: LoopConfig, hooks: Hooks = Hooks()) -> TrainState:
    """Run (or resume) to `cfg.total_steps` from a state initialised with `cfg.seed`; returns the
    final state, one before `total_steps` only when SIGTERM stopped the run (that step saved)."""
    workdir = Path(cfg.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoints = Checkpoints(checkpoint_location(cfg.workdir, cfg.checkpoint_dir), keep=cfg.keep_checkpoints)
    main = distributed.is_main()
    state = trainer.init_state(cfg.seed)
    data_state, skip_offset = None, {}
    if checkpoints.latest_step() is not None:
        state, record = checkpoints.restore(state)
        data_state = _resume_data_state(record)
        skip_offset = record.get("data_skips", {})
    metrics_file = MetricsFile(workdir / METRICS_FILE)
    if main:
        metrics_file.truncate_after(int(state.step))
    tb = ScalarLog(workdir / "tb", fresh=int(state.step) == 0) if main else _NoLog()
    stop = StopRequest()
    bar = tqdm(total=cfg.total_steps, initial=int(state.step), desc="train", unit="step",
               disable=not (cfg.progress and main))
    batches = stream.batches(data_state)

    def skips() -> dict[str, int]:
        """Skipped images of the whole run, every process's summed (a collective: all call it)."""
        mine = stream.skip_counts()
        total = dict(skip_offset)
        for counts in distributed.allgather_json(mine):
            for k, v in counts.items():
                total[k] = total.get(k, 0) + v
        return dict(sorted(total.items()))

    def record_of(done: int, position) -> dict:
        record = {"step": done, "data_state": position, "data_skips": skips()}
        if jax.process_count() > 1:
            record["data_states"] = distributed.allgather_json(position)
            record["data_state"] = record["data_states"][0]
        return record

    def evaluate(done: int) -> None:
        results = hooks.evaluate(state, done)
        if main:
            metrics_file.append({"step": done, **{f"eval/{k}": v for k, v in results.items()}})
        for name, value in results.items():
            tb.scalar(f"eval/{name}", value, done)

    stopping = False
    try:
        while int(state.step) < cfg.total_steps and not stopping:
            host_batch, data_state = next(batches)
            rows = len(host_batch["pixels"]) * jax.process_count()  # each process holds its own rows
            batch = trainer.shard_batch(host_batch, rows)
            start = time.perf_counter()
            state, metrics, samples = trainer.step(state, trainer.frozen, batch)
            done = int(state.step)  # waits for the step: the time below is the step's
            seconds = time.perf_counter() - start
            last = done == cfg.total_steps
            if done % cfg.log_every == 0 or last:
                record = {"step": done, **_scalars(metrics), "data/skipped": sum(skips().values()),
                          "time/step_s": seconds, "time/captions_per_s": rows / seconds}
                if main:
                    metrics_file.append(record)
                    for name, value in record.items():
                        if name != "step":
                            tb.scalar(name, value, done)
                    bar.set_postfix(reward=f"{record['reward/mean']:.3f}")
            if cfg.samples_every and (done % cfg.samples_every == 0 or last):
                write_samples(workdir, done, samples, hooks.decode, cfg.num_samples, tb)
            bar.update(1)
            if int(state.skipped_in_row) >= cfg.max_skips_in_row:
                raise TooManySkips(f"{int(state.skipped_in_row)} updates in a row had a non-finite loss or gradient; "
                                   f"the last good checkpoint is step {checkpoints.latest_step()}")
            if hooks.evaluate is not None and ((cfg.eval_every and done % cfg.eval_every == 0) or last):
                evaluate(done)
            stopping = stop.agreed()
            if done % cfg.checkpoint_every == 0 or last or stopping:
                _save(checkpoints, done, state, record_of(done, data_state))
        _wait(checkpoints)
    finally:
        bar.close()
        stop.restore()
        try:
            checkpoints.close()
        except Exception:  # noqa: BLE001 - the error that ended the loop is the one to report
            pass
        tb.close()
    return state
