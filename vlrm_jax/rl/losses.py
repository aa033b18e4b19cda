"""The A2C losses (arXiv 2404.01911, section 3) as sums over valid tokens.

    L_v = (1/n) sum_k (R_k - V_k)^2
    A_k = R_k - stopgrad(V_k)          (or R_k - b for the scst / rloo baselines)
    M_k = (A_k - mean A) / std A       over every valid token of the whole rollout batch
    L_p = -(1/n) sum_k p_k M_k         (p_k, or log p_k with objective="logprob")

n is the number of valid tokens in the whole batch. The functions here return sums; the step
divides by the global n once, so micro-batches and devices add up to exactly the full-batch
loss (a mean of micro-batch means would weight short captions' tokens more).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from vlrm_jax.generate.sampling import kth_largest

NEG_INF = -jnp.inf


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class AdvantageStats:
    count: jax.Array  # valid tokens in the whole batch
    mean: jax.Array
    std: jax.Array  # population std (ddof 0)


def advantage_stats(advantages, mask) -> AdvantageStats:
    """Mean and std of A over the valid tokens of the arrays given: called on the whole batch
    inside jit, a batch sharded over devices reduces across them."""
    m = mask.astype(jnp.float32)
    count = jnp.sum(m)
    mean = jnp.sum(advantages * m) / jnp.maximum(count, 1.0)
    var = jnp.sum(jnp.square(advantages - mean) * m) / jnp.maximum(count, 1.0)
    return AdvantageStats(count, mean, jnp.sqrt(var))


def normalise(advantages, stats: AdvantageStats, eps: float):
    return (advantages - stats.mean) / (stats.std + eps)


def value_loss_sum(returns, values, mask):
    return jnp.sum(jnp.square(returns - values) * mask.astype(jnp.float32))


def policy_loss_sum(token_prob, token_logprob, normalised_advantages, mask, objective: str):
    """-sum_k p_k M_k (or log p_k) over valid tokens; M is data, not differentiated."""
    weight = token_prob if objective == "prob" else token_logprob
    m = mask.astype(jnp.float32)
    return -jnp.sum(weight * jax.lax.stop_gradient(normalised_advantages) * m)


def explained_variance(returns, values, mask):
    """1 - Var(R - V) / Var(R) over valid tokens (1: V predicts R; 0: no better than its mean)."""
    residual = advantage_stats(returns - values, mask).std ** 2
    total = advantage_stats(returns, mask).std ** 2
    return jnp.where(total > 0, 1.0 - residual / jnp.where(total > 0, total, 1.0), 0.0)


# ----------------------------------------------------------------------------------------------
# p_k: the sampled token's probability, without a (B, T, vocab) fp32 logits tensor.
# ----------------------------------------------------------------------------------------------
def _chunk_stats(logits, tokens, prob: str, temperature: float, top_k: int | None):
    """(B, C, V) fp32 logits -> log p, entropy (B, C) under the chosen distribution."""
    scores = logits if prob == "raw" else logits / temperature
    chosen = jnp.take_along_axis(scores, tokens[..., None], axis=-1)
    if prob == "sampled" and top_k is not None and top_k < scores.shape[-1]:
        kth = kth_largest(scores, top_k)
        # the sampled token always stays in the support: a cached-vs-full rounding difference at
        # the k-th boundary must not turn its probability into 0 (and its gradient into NaN)
        kth = jnp.minimum(kth, chosen)
        scores = jnp.where(scores < kth, NEG_INF, scores)
    logp_all = jax.nn.log_softmax(scores, axis=-1)
    logp = jnp.take_along_axis(logp_all, tokens[..., None], axis=-1)[..., 0]
    p_all = jnp.exp(logp_all)
    entropy = -jnp.sum(jnp.where(p_all > 0, p_all * logp_all, 0.0), axis=-1)
    return logp, entropy


def token_stats(hidden, tokens, logits_fn: Callable, prob: str, temperature: float, top_k: int | None,
                chunk: int):
    """hidden (B, T, E) states that predict tokens (B, T). Returns (log p_k, entropy), both
    (B, T) fp32. The vocabulary projection runs `chunk` positions at a time under a scan whose
    body is rematerialised, so the backward pass holds one chunk's logits, not all of them."""
    b, t, e = hidden.shape
    pad = (-t) % chunk
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        tokens = jnp.pad(tokens, ((0, 0), (0, pad)))
    n = (t + pad) // chunk
    hs = hidden.reshape(b, n, chunk, e).swapaxes(0, 1)
    ts = tokens.reshape(b, n, chunk).swapaxes(0, 1)

    @jax.checkpoint
    def body(_, xs):
        h, tok = xs
        return None, _chunk_stats(logits_fn(h), tok, prob, temperature, top_k)

    _, (logp, entropy) = jax.lax.scan(body, None, (hs, ts))
    unchunk = lambda x: x.swapaxes(0, 1).reshape(b, n * chunk)[:, :t]  # noqa: E731
    return unchunk(logp), unchunk(entropy)


def support_token_stats(hidden, tokens, support, logits_at: Callable, temperature: float):
    """(log p_k, entropy) under the rollout's sampling distribution, from the logits of its support
    only: support (B, T, S) holds the ids the rollout's top-k kept at each step (-1 padding), so
    the sampling distribution is the softmax of those scores and every other id has probability 0.
    The sampled token is scored beside them (it is always in the support, unless more than S
    scores tied at the k-th; then it joins it, as `_chunk_stats` keeps it). Equal to
    `token_stats(prob="sampled")` without projecting onto the whole vocabulary, forward or back."""
    tokens = tokens.astype(support.dtype)
    in_support = jnp.any(support == tokens[..., None], axis=-1)
    ids = jnp.concatenate([support, tokens[..., None]], axis=-1)
    valid = jnp.concatenate([support >= 0, ~in_support[..., None]], axis=-1)
    scores = logits_at(hidden, jnp.maximum(ids, 0)) / temperature
    chosen = scores[..., -1]
    scores = jnp.where(valid, scores, NEG_INF)
    normaliser = jax.nn.logsumexp(scores, axis=-1, keepdims=True)
    logp_all = scores - normaliser
    logp = chosen - normaliser[..., 0]
    p_all = jnp.exp(logp_all)
    entropy = -jnp.sum(jnp.where(valid, p_all * logp_all, 0.0), axis=-1)
    return logp, entropy
