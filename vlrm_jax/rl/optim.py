"""One optimizer step per rollout batch: Adam without weight decay, linear warm-up then a constant
learning rate, global-norm clipping over both networks together or each on its own, and a guard
that drops an update whose loss or gradient is not finite."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from vlrm_jax.rl.config import A2CConfig


def learning_rate(cfg: A2CConfig):
    """lr * min(1, (i + 1) / warmup) at update i: the first update already moves (a schedule
    from 0 would waste it), the warmup_steps-th reaches the paper's 1e-5."""
    warmup = max(cfg.warmup_steps, 1)
    return lambda count: cfg.learning_rate * jnp.minimum(1.0, (count + 1) / warmup)


def adam(cfg: A2CConfig) -> optax.GradientTransformation:
    return optax.adam(learning_rate(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)


def updates_done(opt_state):
    """Adam's step count (what the schedule reads): skipped updates do not advance it."""
    return opt_state[0].count


def clip_factors(cfg: A2CConfig, policy_norm, value_norm):
    """Scale factors (policy, value) that bring the gradient norm to at most clip_norm: of the
    two together ("joint") or of each network ("per_network")."""
    def factor(norm):
        return jnp.minimum(1.0, cfg.clip_norm / jnp.maximum(norm, 1e-12))

    if cfg.clip_mode == "joint":
        both = factor(jnp.sqrt(policy_norm**2 + value_norm**2))
        return both, both
    return factor(policy_norm), factor(value_norm)


def apply(tx: optax.GradientTransformation, params, opt_state, grads, scale):
    updates, opt_state = tx.update(jax.tree.map(lambda g: g * scale, grads), opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def all_finite(*trees) -> jax.Array:
    leaves = [x for t in trees for x in jax.tree.leaves(t)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else jnp.bool_(True)


def keep_if(ok, new, old):
    """new where ok else old, leaf by leaf (a skipped update leaves every buffer bitwise equal)."""
    return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
