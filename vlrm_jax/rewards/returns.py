"""Per-token returns of the VLRM reward (arXiv 2404.01911, equation 1), in pure jax.numpy.

    R_k = w_sim*sim + w_ref*ref - w_noeos*noeos - sum_{s>=k} (w_bad*bad_s + w_repeat*repeat_s)

with gamma = 1: sim, ref and noeos are per caption and reach every token equally; a token's bad /
repeat penalty reaches that token and every token before it (the suffix sum starts at k itself).
R is zero outside the caption mask.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from vlrm_jax.ops import masked_mean


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RewardWeights:
    """Weights of the five reward terms; the paper adds them all with weight 1.

    A pytree, so it can be passed to a jitted function (and swept) without recompiling.
    """

    sim: float = 1.0
    ref: float = 1.0
    noeos: float = 1.0
    bad: float = 1.0
    repeat: float = 1.0


def suffix_sum(x: jax.Array) -> jax.Array:
    """out[..., k] = sum_{s >= k} x[..., s] along the last axis."""
    return jax.lax.cumsum(x, axis=x.ndim - 1, reverse=True)


def compute_returns(
    sim: jax.Array,
    ref: jax.Array,
    bad: jax.Array,
    repeat: jax.Array,
    noeos: jax.Array,
    mask: jax.Array,
    weights: RewardWeights = RewardWeights(),
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Returns R (B, T) float32 and per-component batch means for logging.

    sim, ref, noeos: (B,); bad, repeat, mask: (B, T). Penalties outside the mask are ignored.
    Logged means: sim / ref / noeos over captions; bad / repeat as penalised tokens per caption;
    return over valid tokens; length as valid tokens per caption.
    """
    valid = mask.astype(jnp.float32)
    bad = bad.astype(jnp.float32) * valid
    repeat = repeat.astype(jnp.float32) * valid
    sim, ref, noeos = (jnp.asarray(x, jnp.float32) for x in (sim, ref, noeos))

    per_caption = weights.sim * sim + weights.ref * ref - weights.noeos * noeos
    penalty_to_go = suffix_sum(weights.bad * bad + weights.repeat * repeat)
    returns = jnp.where(valid > 0, per_caption[:, None] - penalty_to_go, 0.0)

    stats = {
        "sim": jnp.mean(sim),
        "ref": jnp.mean(ref),
        "noeos": jnp.mean(noeos),
        "bad": jnp.mean(jnp.sum(bad, axis=-1)),
        "repeat": jnp.mean(jnp.sum(repeat, axis=-1)),
        "return": masked_mean(returns, mask),
        "length": jnp.mean(jnp.sum(valid, axis=-1)),
    }
    return returns, stats


def term_returns(per_caption: dict, per_token: dict, weights: dict, mask) -> dict[str, tuple[float, jax.Array]]:
    """Each reward term's own per-token return, unweighted, with its signed weight: {name: (w,
    R^name (B, T))} with R = sum_name w * R^name. A caption term (B,) reaches every token; a token
    term (B, T) reaches its token and every token before it. Terms of weight 0 are left out."""
    valid = mask.astype(jnp.float32)
    out = {}
    for name, x in per_caption.items():
        if weights[name] != 0.0:
            out[name] = (weights[name], jnp.asarray(x, jnp.float32)[:, None] * valid)
    for name, x in per_token.items():
        if weights[name] != 0.0:
            out[name] = (weights[name], suffix_sum(x.astype(jnp.float32) * valid) * valid)
    return out
