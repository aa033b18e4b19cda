"""The A2C losses (arXiv 2404.01911, section 3) as sums over valid tokens.

    L_v = (1/n) sum_k (R_k - V_k)^2
    A_k = R_k - stopgrad(V_k)          (or R_k - b for the scst / rloo baselines)
    M_k = (A_k - mean A) / std A       over every valid token of the whole rollout batch
    L_p = -(1/n) sum_k p_k M_k         (p_k, or log p_k with objective="logprob")

and the options the field's other estimators bring (A2CConfig): PPO's clipped ratio against the
rollout policy's p_old, its clipped value loss, a KL term to the initial policy (k1 or k3) and an
entropy bonus, each a sum over valid tokens as well.

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


def value_loss_sum(returns, values, mask, old_values=None, clip: float = 0.0):
    """sum_k (R_k - V_k)^2; with old_values and clip > 0, PPO's clipped value loss:
    max((R - V)^2, (R - V_clipped)^2) with V_clipped = V_old + clip(V - V_old, -clip, clip)."""
    loss = jnp.square(returns - values)
    if old_values is not None and clip > 0:
        clipped = old_values + jnp.clip(values - old_values, -clip, clip)
        loss = jnp.maximum(loss, jnp.square(returns - clipped))
    return jnp.sum(loss * mask.astype(jnp.float32))


def policy_loss_sum(token_prob, token_logprob, normalised_advantages, mask, objective: str):
    """-sum_k p_k M_k (or log p_k) over valid tokens; M is data, not differentiated."""
    weight = token_prob if objective == "prob" else token_logprob
    m = mask.astype(jnp.float32)
    return -jnp.sum(weight * jax.lax.stop_gradient(normalised_advantages) * m)


def clipped_policy_loss_sum(token_logprob, old_logprob, normalised_advantages, mask, objective: str, clip: float):
    """PPO's objective against the rollout policy's log p_old: with r_k = p_k / p_old_k,
    -sum_k c_k min(r_k M_k, clip(r_k, 1 - eps, 1 + eps) M_k), where c_k = p_old_k for
    objective="prob" (so unclipped it is -sum p_k M_k, the paper's loss) and 1 for "logprob"
    (the usual PPO surrogate, whose gradient at r = 1 is that of -sum log p_k M_k). clip 0: no
    clipping. Returns (loss sum, tokens whose gradient the clip removed)."""
    m = mask.astype(jnp.float32)
    adv = jax.lax.stop_gradient(normalised_advantages)
    old = jax.lax.stop_gradient(old_logprob)
    ratio = jnp.exp(token_logprob - old)
    surrogate = ratio * adv
    if clip > 0:
        bounded = jnp.clip(ratio, 1.0 - clip, 1.0 + clip) * adv
        clipped = (bounded < surrogate).astype(jnp.float32)
        surrogate = jnp.minimum(surrogate, bounded)
    else:
        clipped = jnp.zeros_like(m)
    scale = jnp.exp(old) if objective == "prob" else 1.0
    return -jnp.sum(scale * surrogate * m), jnp.sum(clipped * m)


def kl_to_reference(token_logprob, reference_logprob, estimator: str):
    """Per-token estimates of KL(p || p_ref) on tokens sampled from p (Schulman, "Approximating KL
    divergence", 2020): k1 = log p - log p_ref (unbiased, can be negative), k3 = r - log r - 1
    with r = p_ref / p (unbiased, never negative, lower variance)."""
    log_ratio = jax.lax.stop_gradient(reference_logprob) - token_logprob
    if estimator == "k1":
        return -log_ratio
    return jnp.exp(log_ratio) - log_ratio - 1.0


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
    # log p of the ids outside the support is -inf: zeroed before the product, or its gradient
    # (0 * -inf) is NaN once the entropy is part of the loss
    entropy = -jnp.sum(p_all * jnp.where(p_all > 0, logp_all, 0.0), axis=-1)
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
    entropy = -jnp.sum(p_all * jnp.where(valid, logp_all, 0.0), axis=-1)  # as in _chunk_stats
    return logp, entropy
