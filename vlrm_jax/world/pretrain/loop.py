"""What every stage does around vlrm_jax.world.pretrain.supervised.fit: loss curves under the stage's name, and
the initialisation of the layers it trains from scratch."""
from __future__ import annotations

import time

import jax
import numpy as np
from flax import nnx

from vlrm_jax.metrics import ScalarLog
from vlrm_jax.world.pretrain.supervised import fit
from vlrm_jax.world.pretrain.plots import plot_losses
from vlrm_jax.world.pretrain.record import LOG_EVERY, StageContext


def train_phase(ctx: StageContext, name: str, model, loss_fn, batch_at, phase, trainable=nnx.Param):
    """`fit` with the loss logged under `name` (TensorBoard and PNG); returns (losses, seconds).
    `phase` holds steps and optimizer (a stage config or one of its phases)."""
    log = ScalarLog(ctx.workdir.tensorboard(name))
    start = time.perf_counter()
    try:
        losses = fit(model, loss_fn, batch_at, phase.steps, phase.optimizer, name, log, trainable, LOG_EVERY)
    finally:
        log.close()
    seconds = time.perf_counter() - start
    plot_losses(losses, f"{name} ({phase.steps} steps, {seconds:.0f} s)", ctx.workdir.loss_plot(name))
    return losses, seconds


def fan_in_init(module: nnx.Module, seed: int, skip: tuple[str, ...] = ()) -> None:
    """Redraw every dense kernel as normal(0, 1 / sqrt(fan_in)).

    The model classes initialise like transformers (std 0.02), which suits widths near 768: at
    width 64 each layer then shrinks its input about 8 times, the image reaches the Q-Former's
    output as a product of such factors, and training sits on a plateau for hundreds of steps
    (measured: 200 steps flat at log 2 on a one-word colour check, none with this init)."""
    key = jax.random.key(seed)
    state = nnx.state(module, nnx.Param)
    flat = []
    for path, var in nnx.to_flat_state(state):
        value = var.get_value()
        if path[-1] == "kernel" and value.ndim >= 2 and not any(p in skip for p in path):
            # (in, out), stacked (layers, in, out) or conv (kh, kw, in, out)
            fan_in = int(np.prod(value.shape[:-1])) if value.ndim == 4 else value.shape[-2]
            key, sub = jax.random.split(key)
            var = var.replace(jax.random.normal(sub, value.shape, value.dtype) / np.sqrt(fan_in))
        flat.append((path, var))
    nnx.update(module, nnx.from_flat_state(flat))
