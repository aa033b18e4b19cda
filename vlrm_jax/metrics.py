"""Scalar (and text) logging to TensorBoard event files, shared by pre-training and the trainer.

tensorboardX writes the event files without importing TensorFlow, which must not load before
torchvision in a process that also runs open_clip.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterable

from tensorboardX import SummaryWriter


class ScalarLog:
    """One run per folder: an existing folder is cleared, so curves of an older run never overlap."""

    def __init__(self, logdir: str | Path, fresh: bool = True):
        logdir = Path(logdir)
        if fresh and logdir.exists():
            shutil.rmtree(logdir)
        logdir.mkdir(parents=True, exist_ok=True)
        self.logdir = logdir
        self._writer = SummaryWriter(logdir=str(logdir))

    def scalar(self, tag: str, value: float, step: int) -> None:
        self._writer.add_scalar(tag, float(value), global_step=int(step))

    def scalars(self, first_step: int, tag: str, values: Iterable[float]) -> None:
        """Consecutive values of one tag from `first_step` on (a fetched block of train steps)."""
        for i, v in enumerate(values):
            self.scalar(tag, v, first_step + i)
        self._writer.flush()

    def text(self, tag: str, text: str, step: int) -> None:
        """Markdown text (a table of sampled captions) shown in TensorBoard's text tab."""
        self._writer.add_text(tag, text, global_step=int(step))
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> "ScalarLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
