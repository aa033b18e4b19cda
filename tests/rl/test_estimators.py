"""The estimators of vlrm_jax/rl/estimators.py against NumPy written from their definitions, and
the grouped ones through the step: a GRPO update is the same whatever the micro-batch split, and
the advantages it logs are the group-normalised returns."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.rl.tiny_steps import EOS, ROLLOUT, snapshot, value_net
from tests.stacks import tiny_captioner, tiny_pixels
from vlrm_jax.rl import estimators
from vlrm_jax.rl.config import A2CConfig
from vlrm_jax.rl.scoring import TokenCountScorer
from vlrm_jax.rl.step import A2CStep

GROUP = 4


def _returns(rows=12, length=5, seed=0):
    rng = np.random.default_rng(seed)
    returns = rng.normal(size=(rows, length)).astype(np.float32)
    returns[3] = returns[2]  # two equal captions in a group
    returns[8:12, 0] = 1.5  # a group whose captions all got the same reward
    return returns


def _numpy_advantages(name, returns, eps=1e-8):
    whole = returns[:, 0].astype(np.float64)
    out = np.empty_like(returns, dtype=np.float64)
    for g in range(len(whole) // GROUP):
        rows = slice(g * GROUP, (g + 1) * GROUP)
        group = whole[rows]
        if name == "rloo":
            base = np.array([(group.sum() - r) / (GROUP - 1) for r in group])
            out[rows] = returns[rows] - base[:, None]
        elif name == "grpo":  # a group without spread: no signal, on any token
            std = group.std(ddof=1)
            out[rows] = (returns[rows] - group.mean()) / (std + eps) if std > 0 else 0.0
        elif name == "drgrpo":
            out[rows] = returns[rows] - group.mean()
    return out


@pytest.mark.parametrize("name", ["rloo", "grpo", "drgrpo"])
def test_grouped_advantages_equal_numpy(name):
    returns = _returns()
    kind = estimators.ESTIMATORS[name]
    offset, scale = kind.baseline(jnp.asarray(returns[:, 0]), GROUP, None, 1e-8)
    got = estimators.advantages(jnp.asarray(returns), offset=offset, scale=scale)
    np.testing.assert_allclose(np.asarray(got), _numpy_advantages(name, returns), rtol=1e-5, atol=1e-6)
    if name != "rloo":  # an all-equal group gives no signal, not a division by zero
        np.testing.assert_array_equal(np.asarray(got)[8:12, 0], 0.0)
    if name == "grpo":  # nor on its later tokens, whose returns differ by the penalties to go
        np.testing.assert_array_equal(np.asarray(got)[8:12], 0.0)


def test_grpo_takes_equal_rewards_as_equal_whatever_their_rounding():
    """Three equal rewards whose float32 mean is not exact (it rounds to a neighbour): no
    advantage of order 1 from dividing rounding by rounding (it was -0.72 on every token)."""
    whole = jnp.full((6,), 0.64042264, jnp.float32).at[3:].set(-0.5356694)
    offset, scale = estimators.ESTIMATORS["grpo"].baseline(whole, 3, None, 1e-8)
    assert np.all(np.isinf(np.asarray(scale)))
    np.testing.assert_array_equal(np.asarray(estimators.advantages(whole[:, None], offset=offset, scale=scale)), 0.0)


def test_a2c_and_scst_subtract_the_value_and_the_greedy_reward():
    returns = _returns()
    values = np.random.default_rng(1).normal(size=returns.shape).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(estimators.advantages(jnp.asarray(returns), jnp.asarray(values))),
                                  returns - values)
    greedy = np.random.default_rng(2).normal(size=len(returns)).astype(np.float32)
    offset, scale = estimators.ESTIMATORS["scst"].baseline(jnp.asarray(returns[:, 0]), 1, jnp.asarray(greedy), 1e-8)
    assert scale is None
    np.testing.assert_array_equal(np.asarray(estimators.advantages(jnp.asarray(returns), offset=offset)),
                                  returns - greedy[:, None])


def test_what_each_estimator_needs_is_read_from_its_entry():
    needs = {name: (e.uses_value, e.grouped, e.greedy_rollout, e.whiten) for name, e in estimators.ESTIMATORS.items()}
    assert needs == {"a2c": (True, False, False, True), "scst": (False, False, True, True),
                     "rloo": (False, True, False, True), "grpo": (False, True, False, False),
                     "drgrpo": (False, True, False, False)}
    assert A2CConfig(estimator="grpo", group_size=4).samples_per_image == 4
    assert A2CConfig(estimator="a2c", group_size=4).samples_per_image == 1
    with pytest.raises(ValueError, match="group_size=1: grpo"):
        A2CConfig(estimator="grpo", group_size=1)


@pytest.fixture(scope="module")
def grpo_experience():
    """A GRPO rollout of 4 images x 4 captions on the synthetic reward, with returns spread so
    that groups differ."""
    captioner = tiny_captioner()
    cfg = A2CConfig(estimator="grpo", group_size=GROUP, learning_rate=1e-3)
    step = A2CStep(cfg, captioner, value_net(captioner), TokenCountScorer(20, EOS), ROLLOUT)
    state = step.init_state(0)
    exp, metrics, _ = step.experience(state, step.frozen, {"pixels": tiny_pixels(16 // GROUP)})
    rng = np.random.default_rng(0)
    mask = np.asarray(exp.mask)
    returns = (rng.normal(size=exp.returns.shape) * mask).astype(np.float32)
    offset, scale = cfg.kind.baseline(jnp.asarray(returns[:, 0]), GROUP, None, cfg.advantage_eps)
    exp = dataclasses.replace(exp, returns=jnp.asarray(returns), baseline=offset, scale=scale)
    return captioner, step, state, exp


def test_grpo_update_is_exact_under_micro_batches_and_uses_group_statistics(grpo_experience):
    captioner, step, state, exp = grpo_experience
    mask = np.asarray(exp.mask)
    want = _numpy_advantages("grpo", np.asarray(exp.returns))[mask > 0]
    updates = {}
    for m in (1, 4):
        s = A2CStep(dataclasses.replace(step.cfg, micro_batches=m), captioner, value_net(captioner),
                    step.scorer, ROLLOUT)
        new, metrics = s.update(jax.tree.map(jnp.copy, state), s.frozen, exp)
        updates[m] = snapshot((new.policy, new.value))
        np.testing.assert_allclose(metrics["advantage/mean"], want.mean(), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(metrics["advantage/std"], want.std(), rtol=1e-4)
        assert float(metrics["grad_norm/value"]) == 0.0  # no value network is trained
    for a, b in zip(jax.tree.leaves(updates[1]), jax.tree.leaves(updates[4])):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)


@pytest.mark.slow  # two main.py runs: compiles
@pytest.mark.parametrize("name", ["grpo", "drgrpo"])
def test_main_trains_with_each_grouped_estimator(name, tmp_path):
    from tests.rl.main_runs import main, metrics

    main(tmp_path, f"--config.a2c.estimator={name}", "--config.a2c.group_size=2", "--config.total_steps=2",
         "--config.checkpoint_every=2")
    rows = metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2] and all("baseline/mean" in r for r in rows)
    assert all(r["grad_norm/value"] == 0.0 for r in rows)
