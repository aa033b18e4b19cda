"""The optimizer from a config block (learning_rate, warmup_steps, end_lr_fraction, b1, b2,
weight_decay, grad_clip_norm)."""
from __future__ import annotations

import jax
import optax


def make_optimizer(opt_cfg, steps: int) -> optax.GradientTransformation:
    """AdamW on a linear warm-up then cosine decay; no weight decay on biases, norms and scalars.
    weight_decay 0 and end_lr_fraction 1 give plain Adam after warm-up (the paper's A2C)."""
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, opt_cfg.learning_rate, min(opt_cfg.warmup_steps, max(steps - 1, 1)), max(steps, 2),
        end_value=opt_cfg.learning_rate * opt_cfg.end_lr_fraction)
    decay_mask = lambda params: jax.tree.map(lambda x: x.ndim >= 2, params)  # noqa: E731
    return optax.chain(
        optax.clip_by_global_norm(opt_cfg.grad_clip_norm),
        optax.adamw(schedule, b1=opt_cfg.b1, b2=opt_cfg.b2, weight_decay=opt_cfg.weight_decay,
                    mask=decay_mask))
