"""compute_returns against a plain per-token loop, and the paper's Table 1 example."""
import dataclasses

import jax
import numpy as np
import pytest

from tests.rewards.token_pieces import pieces_to_ids
from vlrm_jax.rewards import PenaltyRules, RewardWeights, compute_returns, token_penalties


def loop_returns(sim, ref, bad, repeat, noeos, mask, w):
    """Equation 1 of the paper, one token at a time."""
    batch, length = bad.shape
    out = np.zeros((batch, length), np.float64)
    for b in range(batch):
        for k in range(length):
            if not mask[b, k]:
                continue
            to_go = sum(
                w.bad * bad[b, s] + w.repeat * repeat[b, s] for s in range(k, length) if mask[b, s]
            )
            out[b, k] = w.sim * sim[b] + w.ref * ref[b] - w.noeos * noeos[b] - to_go
    return out


def random_batch(seed, batch=5, length=11):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, length + 1, size=batch)
    mask = np.arange(length)[None, :] < lengths[:, None]
    return dict(
        sim=rng.normal(size=batch).astype(np.float32),
        ref=rng.normal(size=batch).astype(np.float32),
        bad=(rng.random((batch, length)) < 0.3).astype(np.float32),
        repeat=(rng.random((batch, length)) < 0.2).astype(np.float32),
        noeos=(rng.random(batch) < 0.5).astype(np.float32),
        mask=mask,
    )


@pytest.mark.parametrize(
    "weights",
    [RewardWeights(), RewardWeights(sim=2.0, ref=0.0, noeos=0.5, bad=3.0, repeat=0.25)],
)
def test_returns_match_the_loop_reference(weights):
    inputs = random_batch(0)
    returns, stats = jax.jit(compute_returns)(**inputs, weights=weights)
    expected = loop_returns(**inputs, w=weights)
    np.testing.assert_allclose(np.asarray(returns), expected, rtol=1e-6, atol=1e-6)
    assert returns.dtype == np.float32 and returns.shape == inputs["mask"].shape

    mask = inputs["mask"]
    np.testing.assert_allclose(stats["sim"], inputs["sim"].mean(), rtol=1e-6)
    np.testing.assert_allclose(stats["noeos"], inputs["noeos"].mean(), rtol=1e-6)
    np.testing.assert_allclose(stats["bad"], (inputs["bad"] * mask).sum(1).mean(), rtol=1e-6)
    np.testing.assert_allclose(stats["repeat"], (inputs["repeat"] * mask).sum(1).mean(), rtol=1e-6)
    np.testing.assert_allclose(stats["return"], expected[mask].mean(), rtol=1e-5)
    np.testing.assert_allclose(stats["length"], mask.sum(1).mean(), rtol=1e-6)


def test_penalties_outside_the_mask_are_ignored():
    inputs = random_batch(1)
    returns, _ = compute_returns(**inputs)
    noisy = dict(inputs, bad=np.ones_like(inputs["bad"]), repeat=np.ones_like(inputs["repeat"]))
    noisy["bad"][inputs["mask"]] = inputs["bad"][inputs["mask"]]
    noisy["repeat"][inputs["mask"]] = inputs["repeat"][inputs["mask"]]
    noisy_returns, _ = compute_returns(**noisy)
    np.testing.assert_array_equal(np.asarray(returns), np.asarray(noisy_returns))
    assert not np.asarray(returns)[~inputs["mask"]].any()


def test_weights_are_a_pytree_so_jit_does_not_recompile_per_value():
    inputs = random_batch(2)
    traces = []

    @jax.jit
    def run(weights):
        traces.append(1)
        return compute_returns(**inputs, weights=weights)[0]

    run(RewardWeights())
    run(RewardWeights(bad=2.0))
    assert len(traces) == 1
    assert [f.name for f in dataclasses.fields(RewardWeights)] == [
        "sim", "ref", "noeos", "bad", "repeat"
    ]


def test_paper_table1(opt_tokenizer):
    """Table 1: bad phrases {'an image of', 'is talking about'}; 'shirt' repeats, 'green' is a
    colour. The stored paper text lacks the table body, so the caption is rebuilt from its caption
    and the R column is computed by hand with sim = 3.25, ref = -1.25 (sim + ref = 2)."""
    rules = PenaltyRules(
        bad_phrases=("an image of", "is talking about"),
        exempt_words=PenaltyRules.default().exempt_words,
    )
    words = "an image of a man in a green shirt is talking about his green shirt".split()
    ids = pieces_to_ids(opt_tokenizer, [words[0], *(" " + w for w in words[1:]), 2])
    p = token_penalties(ids, opt_tokenizer, rules)
    #           an image of a man in a green shirt is talking about his green shirt </s>
    bad = [1, 1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0]
    repeat = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]
    r_column = [-5, -4, -3, -2, -2, -2, -2, -2, -2, -2, -1, 0, 1, 1, 1, 2]
    np.testing.assert_array_equal(p.bad, bad)
    np.testing.assert_array_equal(p.repeat, repeat)
    assert p.noeos == 0
    returns, _ = compute_returns(
        np.float32([3.25]), np.float32([-1.25]), p.bad[None], p.repeat[None],
        np.float32([p.noeos]), p.mask[None],
    )
    np.testing.assert_array_equal(np.asarray(returns)[0], np.float32(r_column))
