"""Logit processors and warpers, vectorised, with transformers' semantics."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from vlrm_jax.generate.sampling import kth_largest

NEG_INF = -jnp.inf


def ban_repeated_ngrams(scores, history, cur_len, n: int):
    """NoRepeatNGram: ban every token that would complete an n-gram already in `history[:cur_len]`.

    history (R, L) holds the whole sequence, prompt ids included, as transformers sees it;
    cur_len is a traced scalar (the same for every row).
    """
    if n <= 0:
        return scores
    length = history.shape[1]
    prefix = jax.lax.dynamic_slice_in_dim(history, cur_len - (n - 1), n - 1, axis=1) if n > 1 else None
    starts = jnp.arange(length - n + 1)
    # windows[r, j, :] = history[r, j : j + n]
    windows = jnp.stack([history[:, i : length - n + 1 + i] for i in range(n)], axis=-1)
    match = starts[None, :] + n <= cur_len  # the n-gram lies fully inside the sequence so far
    if n > 1:
        match = match & jnp.all(windows[:, :, : n - 1] == prefix[:, None, :], axis=-1)
    match = match & (cur_len + 1 >= n)
    rows = jnp.broadcast_to(jnp.arange(scores.shape[0])[:, None], match.shape)
    # one scatter into the scores, in place: unmatched windows point past the vocabulary and drop
    banned = jnp.where(match, windows[:, :, n - 1], scores.shape[-1])
    return scores.at[rows, banned].set(NEG_INF, mode="drop")


def suppress_eos(scores, step, min_new_tokens: int, eos_token_id: int):
    """MinNewTokensLength: EOS is impossible while fewer than min_new_tokens were generated."""
    if min_new_tokens <= 0:
        return scores
    # adding 0 or -inf to one column updates it in place; a select would copy the whole scores
    return scores.at[:, eos_token_id].add(jnp.where(step < min_new_tokens, NEG_INF, 0.0))


def temperature(scores, t: float):
    return scores if t == 1.0 else scores / t


def top_k(scores, k: int | None):
    """Keep the k best (ties with the k-th kept, as transformers does)."""
    if k is None or k >= scores.shape[-1]:
        return scores
    return jnp.where(scores < kth_largest(scores, k), NEG_INF, scores)


def top_p(scores, p: float):
    """Nucleus: drop the low tail whose total probability is at most 1 - p (always keep the best)."""
    if p >= 1.0:
        return scores
    order = jnp.argsort(scores, axis=-1)  # ascending, as transformers sorts
    sorted_scores = jnp.take_along_axis(scores, order, axis=-1)
    cum = jnp.cumsum(jax.nn.softmax(sorted_scores, axis=-1), axis=-1)
    remove_sorted = (cum <= 1 - p).at[..., -1].set(False)
    remove = jnp.zeros_like(remove_sorted).at[jnp.arange(scores.shape[0])[:, None], order].set(remove_sorted)
    return jnp.where(remove, NEG_INF, scores)
