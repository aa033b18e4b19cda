"""The training loop: a thin driver around `A2CStep.step`.

Per step: the batch at the current data position (a pure function of the position, so a resumed
run reads what an uninterrupted one would), one jitted step, metrics to `metrics.jsonl` and
TensorBoard, and every `checkpoint_every` steps an asynchronous checkpoint of the whole state.
Started again on the same workdir it resumes from the latest complete checkpoint and first drops
the metric lines written after it, so the file never holds a step twice. SIGTERM (preemption)
is honoured at the next step boundary: checkpoint, wait for it, return.
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
from tqdm.auto import tqdm

from vlrm_jax.rl.checkpoint import Checkpoints
from vlrm_jax.rl.step import A2CStep
from vlrm_jax.rl.state import TrainState

METRICS_FILE = "metrics.jsonl"


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    workdir: str
    total_steps: int
    checkpoint_every: int = 100
    log_every: int = 1
    keep_checkpoints: int = 3
    max_skips_in_row: int = 10  # this many non-finite updates in a row stop the run
    progress: bool = True


class StopRequest:
    """Set by SIGTERM; the loop polls it between steps (a signal never interrupts a step)."""

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def restore(self):
        signal.signal(signal.SIGTERM, self._previous)


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


def _scalars(metrics) -> dict[str, float]:
    return {name: float(np.asarray(v)) for name, v in jax.device_get(metrics).items()}


def train(step: A2CStep, batch_at: Callable[[int], dict], cfg: LoopConfig, seed: int) -> TrainState:
    """Run (or resume) to `cfg.total_steps`; returns the final state. `batch_at(position)` gives
    the host batch of data position `position` (0, 1, 2, ...)."""
    workdir = Path(cfg.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoints = Checkpoints(workdir / "checkpoints", keep=cfg.keep_checkpoints)
    state = step.init_state(seed)
    position = 0
    if checkpoints.latest_step() is not None:
        state, record = checkpoints.restore(state)
        position = record["data_position"]
    metrics_file = MetricsFile(workdir / METRICS_FILE)
    metrics_file.truncate_after(int(state.step))
    stop = StopRequest()
    bar = tqdm(total=cfg.total_steps, initial=int(state.step), desc="train", unit="step", disable=not cfg.progress)
    try:
        while int(state.step) < cfg.total_steps and not stop.requested:
            batch = step.shard_batch(batch_at(position))
            position += 1
            start = time.perf_counter()
            state, metrics = step.step(state, step.frozen, batch)
            done = int(state.step)  # waits for the step: the time below is the step's
            seconds = time.perf_counter() - start
            if done % cfg.log_every == 0 or done == cfg.total_steps:
                record = {"step": done, **_scalars(metrics), "time/step_s": seconds,
                          "time/captions_per_s": len(next(iter(batch.values()))) / seconds}
                metrics_file.append(record)
                bar.set_postfix(reward=f"{record['reward/mean']:.3f}")
            bar.update(1)
            if int(state.skipped_in_row) >= cfg.max_skips_in_row:
                raise TooManySkips(f"{int(state.skipped_in_row)} updates in a row had a non-finite loss or gradient; "
                                   f"the last good checkpoint is step {checkpoints.latest_step()}")
            if done % cfg.checkpoint_every == 0 or done == cfg.total_steps or stop.requested:
                checkpoints.save(done, state, {"data_position": position, "step": done})
        checkpoints.wait()
    finally:
        bar.close()
        stop.restore()
        checkpoints.close()
    return state
