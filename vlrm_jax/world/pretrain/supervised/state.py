"""A model split into trainable parameters and the frozen rest, and the jitted step over them.

Plain `jax.jit` over `nnx.split` state, not nnx.jit: a step then costs no Python graph traversal.
The trainable parameters and the optimizer state are donated (updated in place); the frozen part
is an argument that is neither differentiated nor donated, never a closed-over constant.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx


@dataclasses.dataclass
class TrainState:
    graphdef: Any
    params: Any  # the trainable nnx.State
    frozen: Any  # everything else
    opt_state: Any


def split_trainable(model: nnx.Module, trainable, tx: optax.GradientTransformation, device=None) -> TrainState:
    """Split `model` by the `trainable` filter and initialise the optimizer on that part."""
    graphdef, params, frozen = nnx.split(model, trainable, ...)
    # Inputs as the step's outputs will be (strong types, committed to the device), or the
    # second step compiles again: a weak-typed leaf (a Python float put into a parameter) or an
    # uncommitted array beside committed ones (restored weights) is a different cache key.
    device = device or jax.devices()[0]
    params, frozen = jax.device_put(jax.tree.map(lambda x: jnp.array(x, dtype=x.dtype), (params, frozen)), device)
    return TrainState(graphdef, params, frozen, jax.device_put(tx.init(params), device))


def make_train_step(graphdef, loss_fn: Callable, tx: optax.GradientTransformation) -> Callable:
    """(params, opt_state, frozen, batch) -> (params, opt_state, loss) on `loss_fn(model, batch)`."""

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def train_step(params, opt_state, frozen, batch):
        loss, grads = jax.value_and_grad(lambda p: loss_fn(nnx.merge(graphdef, p, frozen), batch))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return train_step
