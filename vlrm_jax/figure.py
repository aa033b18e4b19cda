"""One headless matplotlib figure written to a PNG: the lines every plot shares (the evaluation's
comparison, the shapes world's figures)."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def saved_figure(path: Path, nrows: int = 1, ncols: int = 1, dpi: int = 100, **subplots) -> Iterator[tuple]:
    """`plt.subplots(nrows, ncols, **subplots)` with the Agg backend (no display needed); on a clean
    exit the figure is laid out and saved to `path` (its folder made), and it is closed either way."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, **subplots)
    try:
        yield fig, axes
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)
