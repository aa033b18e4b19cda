"""Small numerics that models, rewards, generation and training share: one definition each, so
the reward, the losses and the pre-training cannot drift apart on an epsilon or a cast."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def l2_normalize(x: jax.Array) -> jax.Array:
    """x / ||x|| over the last axis, with torch F.normalize's floor of 1e-12 on the norm."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def token_logprob(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """log softmax(logits)[token]: logits (..., V), tokens (...) -> (...)."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    return jnp.take_along_axis(logp, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]


def masked_mean(x: jax.Array, mask: jax.Array, axis=None) -> jax.Array:
    """Mean of x where mask is set (over `axis`, all axes by default); 0 where nothing is set."""
    mask = mask.astype(x.dtype)
    return jnp.sum(x * mask, axis=axis) / jnp.maximum(jnp.sum(mask, axis=axis), 1.0)


def next_token_loss(logits: jax.Array, ids: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean cross-entropy of predicting ids[:, 1:] from logits[:, :-1] where mask[:, 1:] is set."""
    picked = token_logprob(logits[:, :-1].astype(jnp.float32), ids[:, 1:])
    return -masked_mean(picked, mask[:, 1:])


def broadcast_queries(query_tokens: jax.Array, batch: int) -> jax.Array:
    """A (1, Q, D) learned query parameter repeated for a batch: (batch, Q, D), no copy."""
    return jnp.broadcast_to(query_tokens, (batch, *query_tokens.shape[1:]))
