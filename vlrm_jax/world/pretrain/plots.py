"""Loss curves as PNGs (TensorBoard gets the same values through vlrm_jax.metrics)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from vlrm_jax.world.pretrain.record import LOG_EVERY


def plot_losses(losses: np.ndarray, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(losses, lw=0.6, alpha=0.4, label="step")
    window = max(1, min(LOG_EVERY, len(losses)))
    smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
    ax.plot(np.arange(window - 1, len(losses)), smooth, lw=1.5, label=f"mean of {window}")
    ax.set(title=title, xlabel="step", ylabel="loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
