"""Terminal output of the caption and evaluate commands: warnings, a progress bar and a summary.

Quiet by default: the INFO lines of orbax, absl, TFDS, TensorFlow and XLA say nothing a user of
these commands acts on, and buried the skip warnings. `--verbose` brings them back.
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


def configure_logging(verbose: bool) -> None:
    """Python logging at INFO (`verbose`) or WARNING; call before jax or tensorflow is imported."""
    if verbose:
        logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
        return
    # TensorFlow's and XLA's C++ logs (2: errors only); read once, when those libraries load.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # TensorFlow announces its oneDNN kernels whatever the level above. It only reads TFDS files
    # here (PIL decodes the images), so those kernels never run and can be left off.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT)
    # orbax and TFDS log through absl, warnings about their own internals included (e.g. an
    # unprepared TFDS folder, which the command then reports itself as an error).
    logging.getLogger("absl").setLevel(logging.ERROR)


@contextlib.contextmanager
def progress_bar(total: int, desc: str, enabled: bool = True) -> Iterator[tqdm]:
    """A tqdm bar over `total` images; log lines are printed above it instead of through it."""
    with tqdm(total=total, unit="img", desc=desc, disable=not enabled) as bar:
        if not enabled:
            yield bar
            return
        with logging_redirect_tqdm():
            yield bar
