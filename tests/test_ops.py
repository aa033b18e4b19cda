"""The shared numerics against plain numpy."""
import jax.numpy as jnp
import numpy as np

from vlrm_jax import ops


def test_l2_normalize_gives_unit_rows_and_keeps_zero_rows_finite():
    x = np.array([[3.0, 4.0], [0.0, 0.0]], np.float32)
    out = np.asarray(ops.l2_normalize(jnp.asarray(x)))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]], rtol=1e-6)


def test_token_logprob_is_log_softmax_at_the_token():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 7)).astype(np.float32)
    tokens = rng.integers(7, size=(2, 3))
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    want = np.take_along_axis(logp, tokens[..., None], -1)[..., 0]
    np.testing.assert_allclose(np.asarray(ops.token_logprob(jnp.asarray(logits), jnp.asarray(tokens))), want,
                               rtol=1e-5, atol=1e-6)


def test_masked_mean_over_all_or_one_axis_and_empty_masks():
    x = jnp.asarray([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = jnp.asarray([[1, 1, 0], [0, 0, 0]])
    assert float(ops.masked_mean(x, mask)) == 1.5
    np.testing.assert_array_equal(np.asarray(ops.masked_mean(x, mask, axis=1)), [1.5, 0.0])


def test_next_token_loss_skips_masked_targets():
    logits = jnp.zeros((1, 3, 5)).at[0, 0, 2].set(10.0)  # position 0 predicts token 2 surely
    ids = jnp.asarray([[0, 2, 4]])
    confident = float(ops.next_token_loss(logits, ids, jnp.asarray([[1, 1, 0]])))
    assert confident < 1e-3
    assert abs(float(ops.next_token_loss(logits, ids, jnp.asarray([[1, 1, 1]]))) - np.log(5) / 2) < 1e-3


def test_broadcast_queries_repeats_the_parameter():
    q = jnp.arange(6.0).reshape(1, 3, 2)
    out = ops.broadcast_queries(q, 4)
    assert out.shape == (4, 3, 2) and bool(jnp.all(out == q))
