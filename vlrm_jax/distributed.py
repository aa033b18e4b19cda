"""Several processes, one training run (GPU clusters, TPU pod slices, CPU processes in tests).

`initialize(cfg.distributed)` must run before anything touches the devices (main.py calls it
first). With `enabled` and empty fields, `jax.distributed.initialize()` detects the cluster
itself (TPU pods, SLURM, Open MPI); with a coordinator address, a process count and a process id
every process is told where it stands. After it, `jax.devices()` lists the devices of every
process and one jitted step runs on all of them.

Who does what: every process feeds its own rows of each batch and takes part in every step and
every orbax save and restore; process 0 alone writes metrics, TensorBoard, samples and the run
config and shows the progress bar. `allgather_json` collects small host-side records (data
positions, skip counts) from every process.
"""
from __future__ import annotations

import json

import jax
import numpy as np


def initialize(cfg) -> None:
    """Join the run's processes as `cfg` (the config's `distributed` block) says; nothing when
    not enabled or already done."""
    if not cfg.enabled or jax.distributed.is_initialized():
        return
    if cfg.cpu_collectives != "none":  # collectives between CPU devices of different processes
        jax.config.update("jax_cpu_collectives_implementation", cfg.cpu_collectives)
    explicit = {}
    if cfg.coordinator_address:
        explicit = dict(coordinator_address=cfg.coordinator_address, num_processes=cfg.num_processes,
                        process_id=cfg.process_id)
    jax.distributed.initialize(**explicit, initialization_timeout=cfg.timeout_s)


def is_main() -> bool:
    """Process 0: the one that writes logs and files besides checkpoints."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Every process waits here until all have arrived (nothing with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def allgather_json(value) -> list:
    """[value of process 0, value of process 1, ...] for a JSON-serialisable value; every process
    must call it at the same point."""
    if jax.process_count() == 1:
        return [value]
    from jax.experimental import multihost_utils

    data = np.frombuffer(json.dumps(value, sort_keys=True).encode(), np.uint8)
    lengths = np.asarray(multihost_utils.process_allgather(np.int32(len(data))))
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[:len(data)] = data
    rows = np.asarray(multihost_utils.process_allgather(padded))
    return [json.loads(bytes(row[:n]).decode()) for row, n in zip(rows, lengths)]


def gather(tree):
    """Host copies of (possibly process-spanning) arrays, whole on every process."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)
