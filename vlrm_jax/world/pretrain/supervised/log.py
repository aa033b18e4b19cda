"""Per-step losses kept on the device and fetched in blocks: no host sync per step."""
from __future__ import annotations

import jax
import numpy as np

from vlrm_jax.metrics import ScalarLog


class LossLog:
    """`add` a step's scalar; every `every` steps (and at `flush`) the block is fetched, written
    to the ScalarLog under `tag` and kept in `values`."""

    def __init__(self, log: ScalarLog, every: int, tag: str = "loss"):
        self.log, self.every, self.tag = log, every, tag
        self.values: list[float] = []
        self._pending: list[jax.Array] = []

    def add(self, value: jax.Array) -> list[float] | None:
        """Returns the fetched block when this step completed one."""
        self._pending.append(value)
        return self.flush() if len(self._pending) == self.every else None

    def flush(self) -> list[float] | None:
        if not self._pending:
            return None
        block = [float(v) for v in jax.device_get(self._pending)]
        self.log.scalars(len(self.values), self.tag, block)
        self.values += block
        self._pending = []
        return block

    def array(self) -> np.ndarray:
        return np.asarray(self.values, np.float32)
