"""The CPU's chunked attention (`common.attention` over batch chunks) gives each row the values
and gradients of one fused attention, with or without a mask, in both key layouts."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlrm_jax.models import common

B, TQ, TK, H, D = 6, 5, 7, 2, 4


def _inputs(heads_first_kv: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.normal(size=(B, t, H, D)), jnp.float32) for t in (TQ, TK, TK))
    if heads_first_kv:
        k, v = k.transpose(0, 2, 3, 1), v.transpose(0, 2, 1, 3)
    return q, k, v


MASKS = {
    "none": None,
    "per row": np.random.default_rng(1).random((B, 1, TQ, TK)) < 0.7,
    "shared": np.tril(np.ones((TQ, TK), bool), 2)[None, None],
}


@pytest.mark.parametrize("heads_first_kv", [False, True])
@pytest.mark.parametrize("mask", list(MASKS))
def test_chunks_equal_one_fused_attention(monkeypatch, heads_first_kv, mask):
    monkeypatch.setattr(common, "CPU_CHUNK_SCORE_BYTES", 2 * H * TQ * TK * 4)  # 2 rows a chunk
    assert common.cpu_chunk_rows(B, H * TQ * TK * 4) == 2
    m = None if MASKS[mask] is None else jnp.asarray(MASKS[mask])

    def loss(fn):
        return lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v, m, 0.5, heads_first_kv)))

    q, k, v = _inputs(heads_first_kv)
    chunked = jax.jit(lambda *a: common.attention(*a, m, 0.5, heads_first_kv))(q, k, v)
    fused = jax.jit(lambda *a: common._attention(*a, m, 0.5, heads_first_kv))(q, k, v)
    np.testing.assert_allclose(chunked, fused, rtol=0, atol=1e-6)
    grads = jax.jit(jax.grad(loss(common.attention), argnums=(0, 1, 2)))(q, k, v)
    grads_fused = jax.jit(jax.grad(loss(common._attention), argnums=(0, 1, 2)))(q, k, v)
    for a, b in zip(grads, grads_fused):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_the_cpu_program_maps_over_chunks(monkeypatch):
    monkeypatch.setattr(common, "CPU_CHUNK_SCORE_BYTES", 2 * H * TQ * TK * 4)
    q, k, v = _inputs(False)
    text = jax.jit(lambda *a: common.attention(*a, None, 0.5)).lower(q, k, v).compile().as_text()
    assert "while" in text
    monkeypatch.setattr(common, "CPU_CHUNK_SCORE_BYTES", B * H * TQ * TK * 4)  # the batch fits: fused
    text = jax.jit(lambda *a: common.attention(*a, None, 0.5)).lower(q, k, v).compile().as_text()
    assert "while" not in text


@pytest.mark.parametrize("batch, row_bytes, rows", [
    (64, 1_600_000, 2), (64, 4_200_000, 1), (64, 1_000, 64), (6, 900_000, 3), (7, 900_000, 1), (1, 10**9, 1)])
def test_rows_a_chunk_divide_the_batch_and_fit_the_budget(batch, row_bytes, rows):
    assert common.cpu_chunk_rows(batch, row_bytes) == rows
