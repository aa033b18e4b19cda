"""A supervised loop: one loss, one optimizer, batches drawn per step."""
from __future__ import annotations

from typing import Callable

import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from vlrm_jax.metrics import ScalarLog
from vlrm_jax.world.pretrain.supervised.log import LossLog
from vlrm_jax.world.pretrain.supervised.optimizer import make_optimizer
from vlrm_jax.world.pretrain.supervised.state import make_train_step, split_trainable


def fit(model: nnx.Module, loss_fn: Callable, batch_at: Callable[[int], dict], steps: int, opt_cfg,
        desc: str, log: ScalarLog, trainable=nnx.Param, log_every: int = 25) -> np.ndarray:
    """Train `model` in place on `loss_fn(model, batch_at(step))`; returns the per-step losses.
    Only the `trainable` parameters get gradients and optimizer state; the rest rides along frozen."""
    tx = make_optimizer(opt_cfg, steps)
    state = split_trainable(model, trainable, tx)
    train_step = make_train_step(state.graphdef, loss_fn, tx)
    params, opt_state = state.params, state.opt_state
    losses = LossLog(log, log_every)
    bar = tqdm(range(steps), desc=desc, unit="step", dynamic_ncols=True)
    for step in bar:
        params, opt_state, loss = train_step(params, opt_state, state.frozen, batch_at(step))
        block = losses.add(loss)
        if step == steps - 1:
            block = losses.flush() or block
        if block:
            bar.set_postfix(loss=f"{np.mean(block):.4f}")
    bar.close()
    nnx.update(model, params)
    return losses.array()
