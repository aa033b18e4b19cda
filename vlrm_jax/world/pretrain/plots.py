"""Loss curves as PNGs (TensorBoard gets the same values through vlrm_jax.metrics)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from vlrm_jax.figure import saved_figure
from vlrm_jax.world.pretrain.record import LOG_EVERY


def plot_losses(losses: np.ndarray, title: str, path: Path) -> None:
    with saved_figure(path, figsize=(6, 3.5)) as (_, ax):
        ax.plot(losses, lw=0.6, alpha=0.4, label="step")
        window = max(1, min(LOG_EVERY, len(losses)))
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(np.arange(window - 1, len(losses)), smooth, lw=1.5, label=f"mean of {window}")
        ax.set(title=title, xlabel="step", ylabel="loss")
        ax.legend()
