"""The training loop every stage shares, and the initialisation of its new layers."""
from __future__ import annotations

import functools
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from vlrm_jax.metrics import ScalarLog
from vlrm_jax.world.pretrain.plots import plot_losses
from vlrm_jax.world.pretrain.record import LOG_EVERY, StageContext


def make_optimizer(opt_cfg, steps: int) -> optax.GradientTransformation:
    """AdamW on a linear warm-up then cosine decay; no weight decay on biases, norms and scalars."""
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, opt_cfg.learning_rate, min(opt_cfg.warmup_steps, max(steps - 1, 1)), max(steps, 2),
        end_value=opt_cfg.learning_rate * opt_cfg.end_lr_fraction)
    decay_mask = lambda params: jax.tree.map(lambda x: x.ndim >= 2, params)  # noqa: E731
    return optax.chain(
        optax.clip_by_global_norm(opt_cfg.grad_clip_norm),
        optax.adamw(schedule, b1=opt_cfg.b1, b2=opt_cfg.b2, weight_decay=opt_cfg.weight_decay,
                    mask=decay_mask))


def fit(model: nnx.Module, loss_fn: Callable, batch_at: Callable[[int], dict], steps: int,
        opt_cfg, stage: str, log: ScalarLog, trainable=nnx.Param) -> np.ndarray:
    """Train `model` in place on `loss_fn(model, batch)`; returns the per-step losses.

    Pure-function style (split once, one jitted step over arrays, donated buffers), so a step
    costs no Python graph traversal; only the `trainable` parameters get gradients and optimizer
    state, everything else rides along frozen.
    """
    graphdef, params, frozen = nnx.split(model, trainable, ...)
    # Inputs as the step's outputs will be (strong types, committed to the device), or the
    # second step compiles again: a weak-typed leaf (a Python float put into a parameter) or an
    # uncommitted array beside committed ones (restored weights) is a different cache key.
    device = jax.devices()[0]
    params, frozen = jax.device_put(jax.tree.map(lambda x: jnp.array(x, dtype=x.dtype), (params, frozen)), device)
    tx = make_optimizer(opt_cfg, steps)
    opt_state = jax.device_put(tx.init(params), device)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def train_step(params, opt_state, frozen, batch):
        loss, grads = jax.value_and_grad(lambda p: loss_fn(nnx.merge(graphdef, p, frozen), batch))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses: list[float] = []
    pending: list[jax.Array] = []  # fetched every LOG_EVERY steps: no host sync per step
    bar = tqdm(range(steps), desc=stage, unit="step", dynamic_ncols=True)
    for step in bar:
        params, opt_state, loss = train_step(params, opt_state, frozen, batch_at(step))
        pending.append(loss)
        if len(pending) == LOG_EVERY or step == steps - 1:
            values = [float(v) for v in jax.device_get(pending)]
            log.scalars(len(losses), "loss", values)
            losses += values
            pending = []
            bar.set_postfix(loss=f"{np.mean(values):.4f}")
    bar.close()
    nnx.update(model, params)
    return np.asarray(losses, np.float32)


def step_rng(seed: int, step: int) -> np.random.Generator:
    """Batch `step` of a stage comes from its own stream: the same batches whatever ran before."""
    return np.random.default_rng(np.random.SeedSequence([seed, step]))


def next_token_loss(logits, ids, mask):
    """Mean cross-entropy of predicting ids[:, 1:] from logits[:, :-1] where mask[:, 1:] is set."""
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32))
    picked = jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]
    weight = mask[:, 1:].astype(jnp.float32)
    return -(picked * weight).sum() / jnp.maximum(weight.sum(), 1.0)


def train_phase(ctx: StageContext, name: str, model, loss_fn, batch_at, phase, trainable=nnx.Param):
    """`fit` with the loss logged under `name` (TensorBoard and PNG); returns (losses, seconds).
    `phase` holds steps and optimizer (a stage config or one of its phases)."""
    log = ScalarLog(ctx.workdir.tensorboard(name))
    start = time.perf_counter()
    try:
        losses = fit(model, loss_fn, batch_at, phase.steps, phase.optimizer, name, log, trainable)
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
