"""Exact draws for the sampling loop that stay cheap over a 50k-token vocabulary on CPU.

Two costs dominated a top-k sampling step there (profiled at OPT-2.7B's vocabulary): the k-th
largest score, which XLA turned into a full sort of the vocabulary, and
`jax.random.categorical`, whose Gumbel trick draws one noise value per vocabulary entry and then
takes an arg-max over them. Both are replaced here by computations with the same law.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def kth_largest(scores, k: int):
    """The k-th largest value of each row, ties counted (as transformers' top-k): (..., V) -> (..., 1).

    The minimum of the top-k values (`row_top_k`), not its last one: slicing out the last value
    lets XLA's simplifier rewrite top_k into a full sort of the row (about 130 ms a step at R=16,
    V=50272 on 2 CPU cores)."""
    best = row_top_k(scores.reshape(-1, scores.shape[-1]), k)[0]
    return jnp.min(best, axis=-1).reshape(scores.shape[:-1] + (1,))


def row_top_k(scores, k: int):
    """`lax.top_k(scores, k)` for scores (R, V), the same values and ids, ties in id order.

    Reads the row once for block maxima and ranks only the k blocks with the best maxima: a
    row's k best entries lie in them (an entry outside them is beaten by k block maxima). XLA's
    CPU TopK kernel over a whole 50272-entry row took about 6 ms a step at R=80 on 2 cores, most
    of a beam-search step's time outside the matrix products. Falls back to `lax.top_k` when V
    has no block size of at least 8 that divides it."""
    r, v = scores.shape
    block = math.gcd(v, 64)
    if block < 8 or v // block <= k:
        return jax.lax.top_k(scores, k)
    blocks = scores.reshape(r, v // block, block)
    # the chosen blocks in id order, so ties between their entries fall to the lower id
    chosen = jnp.sort(jax.lax.top_k(jnp.max(blocks, axis=-1), k)[1], axis=-1)
    candidates = jnp.take_along_axis(blocks, chosen[..., None], axis=1).reshape(r, k * block)
    values, at = jax.lax.top_k(candidates, k)
    return values, jnp.take_along_axis(chosen, at // block, axis=1) * block + at % block


def _chunks(v: int) -> tuple[int, int]:
    """(number of chunks, chunk size) covering v entries, both about sqrt(v)."""
    size = math.isqrt(v - 1) + 1
    return -(-v // size), size


def categorical(key, scores):
    """One draw per row from softmax(scores) (R, V); -inf entries are never drawn.

    Inverse CDF with one uniform number per row: the chunk whose running sum of exp(scores)
    passes it, then the entry inside that chunk. Only (R, sqrt V)-sized running sums are needed,
    so each step reads the scores twice and draws R random numbers instead of R * V."""
    r, v = scores.shape
    n, size = _chunks(v)
    top = jnp.max(scores, axis=-1, keepdims=True)
    top = jnp.where(jnp.isfinite(top), top, 0.0)  # a row that is all -inf draws entry 0, not NaN
    padded = jnp.pad(scores, ((0, 0), (0, n * size - v)), constant_values=-jnp.inf)
    weights = jnp.exp(padded - top).reshape(r, n, size)
    chunk = jnp.sum(weights, axis=-1)
    upto = jnp.cumsum(chunk, axis=-1)
    u = jax.random.uniform(key, (r, 1), dtype=upto.dtype) * upto[:, -1:]
    j = _first_above(upto, chunk, u)
    before = jnp.take_along_axis(upto - chunk, j[:, None], axis=1)
    inside = jnp.take_along_axis(weights, j[:, None, None], axis=1)[:, 0]
    i = _first_above(jnp.cumsum(inside, axis=-1), inside, u - before)
    return (j * size + i).astype(jnp.int32)


def _first_above(upto, weight, u):
    """Index of the first running sum above u (R, 1), held to the last entry of positive weight:
    rounding may leave u at or above the final sum, and a zero-weight entry must never be drawn."""
    idx = jnp.arange(upto.shape[-1])
    last = jnp.max(jnp.where(weight > 0, idx, 0), axis=-1)
    return jnp.minimum(jnp.sum(upto <= u, axis=-1), last)
