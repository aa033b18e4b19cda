"""p_k scored on the rollout's recorded top-k support equals p_k from the whole vocabulary, values
and gradients, with ties at the k-th score and a sampled token the record missed."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlrm_jax.generate.config import GenerationConfig
from vlrm_jax.rl import losses

B, T, E, V, K, S = 3, 5, 8, 40, 4, 8
TEMPERATURE = 2.0


def _case():
    rng = np.random.default_rng(0)
    table = jnp.asarray(rng.normal(size=(V, E)), jnp.float32)
    hidden = jnp.asarray(rng.normal(size=(B, T, E)), jnp.float32)
    logits = np.asarray(hidden @ table.T)
    # ties at the k-th score: row 0, step 1 gets two copies of its k-th best id's embedding
    order = np.argsort(-logits[0, 1])
    table = table.at[order[K]].set(table[order[K - 1]])
    logits = np.asarray(hidden @ table.T) / TEMPERATURE
    kth = np.sort(logits, -1)[..., -K][..., None]
    best = np.argsort(-logits, -1, kind="stable")[..., :S]
    support = np.where(np.take_along_axis(logits, best, -1) >= kth, best, -1).astype(np.int32)
    assert (support[0, 1] >= 0).sum() == K + 1  # the tie kept, as transformers keeps it
    tokens = np.array([[support[b, t, (b + t) % K] for t in range(T)] for b in range(B)], np.int32)
    # row 2, step 3: the record lost the sampled token (more ties than S); it must still count
    support[2, 3, list(support[2, 3]).index(tokens[2, 3])] = -1
    return table, hidden, jnp.asarray(tokens), jnp.asarray(support)


def test_support_stats_equal_the_whole_vocabulary():
    table, hidden, tokens, support = _case()
    full = lambda h: losses.token_stats(h, tokens, lambda x: x @ table.T, "sampled", TEMPERATURE, K, 2)  # noqa: E731
    part = lambda h: losses.support_token_stats(  # noqa: E731
        h, tokens, support, lambda x, ids: jnp.einsum("...e,...se->...s", x, table[ids]), TEMPERATURE)
    (lp_full, ent_full), (lp_part, ent_part) = full(hidden), part(hidden)
    np.testing.assert_allclose(lp_part, lp_full, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ent_part, ent_full, rtol=1e-5, atol=1e-6)
    assert np.all(np.isfinite(lp_part)) and float(jnp.max(lp_part)) < 0

    weights = jnp.asarray(np.random.default_rng(1).normal(size=(B, T)), jnp.float32)
    objective = lambda stats: lambda h: jnp.sum(jnp.exp(stats(h)[0]) * weights)  # noqa: E731
    np.testing.assert_allclose(jax.grad(objective(part))(hidden), jax.grad(objective(full))(hidden),
                               rtol=1e-5, atol=1e-6)


def test_support_size_needs_top_k_sampling():
    with pytest.raises(ValueError, match="support_size"):
        GenerationConfig(do_sample=False, support_size=4)
    with pytest.raises(ValueError, match="support_size"):
        GenerationConfig(do_sample=True, top_k=6, support_size=4)
