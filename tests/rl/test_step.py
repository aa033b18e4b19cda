"""The A2C step on tiny pure-JAX stacks (meshes: tests/rl/test_mesh.py): any micro-batch split
gives the same update, only the configured parameters move, frozen weights are held once, a
non-finite update is skipped, and every estimator raises a synthetic reward."""
import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.rl.tiny_steps import EOS, ROLLOUT, snapshot, value_net, vlrm_step
from tests.stacks import tiny_captioner, tiny_itm, tiny_pixels
from vlrm_jax.rl.config import A2CConfig
from vlrm_jax.rl.scoring import TokenCountScorer
from vlrm_jax.rl.placement import device_bytes
from vlrm_jax.rl.step import A2CStep

@pytest.fixture(scope="module")
def count_setup():
    """A step on the synthetic reward, one experience from it and the value of every token."""
    captioner = tiny_captioner()
    step = A2CStep(A2CConfig(learning_rate=1e-3), captioner, value_net(captioner), TokenCountScorer(20, EOS), ROLLOUT)
    state = step.init_state(0)
    exp, _, _ = step.experience(state, step.frozen, {"pixels": tiny_pixels(16)})
    rng = np.random.default_rng(0)
    exp = dataclasses.replace(exp, returns=jnp.asarray(rng.normal(size=exp.returns.shape) * np.asarray(exp.mask), jnp.float32))
    return captioner, step, state, exp


def test_micro_batches_give_the_full_batch_update_and_global_statistics(count_setup):
    captioner, step, state, exp = count_setup
    mask = np.asarray(exp.mask)
    assert 0 < (mask.sum(1) < mask.shape[1]).sum() < len(mask)  # captions of different lengths
    updates = {}
    for m in (1, 2, 4):
        s = A2CStep(dataclasses.replace(step.cfg, micro_batches=m), captioner, value_net(captioner),
                    step.scorer, ROLLOUT)
        new, metrics = s.update(jax.tree.map(jnp.copy, state), s.frozen, exp)
        updates[m] = (snapshot((new.policy, new.value)), jax.tree.map(float, metrics))
        values = np.asarray(s.values(state, s.frozen, exp))
        adv = (np.asarray(exp.returns) - values)[mask > 0].astype(np.float64)
        np.testing.assert_allclose(metrics["advantage/mean"], adv.mean(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(metrics["advantage/std"], adv.std(), rtol=1e-5)
        assert metrics["tokens"] == mask.sum()
    for m in (2, 4):
        for a, b in zip(jax.tree.leaves(updates[1][0]), jax.tree.leaves(updates[m][0])):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)
        for name in ("loss/policy", "loss/value", "grad_norm/policy", "grad_norm/value"):
            np.testing.assert_allclose(updates[m][1][name], updates[1][1][name], rtol=1e-5, err_msg=name)


def test_nan_return_skips_the_update_bitwise(count_setup):
    _, step, state, exp = count_setup
    bad = dataclasses.replace(exp, returns=exp.returns.at[3, 0].set(jnp.nan))
    before = snapshot(state)
    new, metrics = step.update(jax.tree.map(jnp.copy, state), step.frozen, bad)
    assert not bool(metrics["update_ok"]) and int(new.skipped) == 1 and int(new.skipped_in_row) == 1
    after = snapshot(new)
    for name in ("policy", "value", "policy_opt", "value_opt"):
        for a, b in zip(jax.tree.leaves(getattr(before, name)), jax.tree.leaves(getattr(after, name))):
            np.testing.assert_array_equal(a, b)
    assert int(new.step) == int(state.step) + 1  # the next rollout uses a fresh key
    good, metrics = step.update(new, step.frozen, exp)
    assert bool(metrics["update_ok"]) and int(good.skipped) == 1 and int(good.skipped_in_row) == 0


def test_only_configured_parameters_move_and_frozen_weights_are_arguments(vlrm_scorer):
    step = vlrm_step(vlrm_scorer, None)
    state = step.init_state(0)
    batch = step.shard_batch({"pixels": tiny_pixels(16)})  # the shapes of test_mesh (a compile-cache hit)
    frozen_before = snapshot(step.frozen)
    trainable_before = snapshot((state.policy, state.value))
    text = step.step.lower(state, step.frozen, batch).as_text()
    new, _, _ = step.step(state, step.frozen, batch)
    for a, b in zip(jax.tree.leaves(frozen_before), jax.tree.leaves(snapshot(step.frozen))):
        np.testing.assert_array_equal(a, b)  # still alive (not donated) and unchanged
    moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(trainable_before),
                                                      jax.tree.leaves(snapshot((new.policy, new.value))))]
    assert np.mean(moved) > 0.9  # (a few gradients are exactly zero, e.g. the Q-Former's key biases)
    names = {"/".join(map(str, p)).split("/")[0] for p, _ in nnx.to_flat_state(new.policy)}
    assert names == {"query_tokens", "qformer", "language_projection"}
    assert {"/".join(map(str, p)).split("/")[0] for p, _ in nnx.to_flat_state(new.value)} == {"lora", "head"}
    # no weight is baked into the program: every array constant is tiny
    sizes = [int(np.prod([int(d) for d in shape.split("x")[:-1]] or [1]))
             for shape in re.findall(r"constant dense<\[.*?> : tensor<([0-9x]+[a-z0-9]+)>", text)]
    assert max(sizes, default=0) < 64


def test_frozen_weights_held_once_when_shared(vlrm_scorer):
    shared = vlrm_step(vlrm_scorer, None)
    assert shared.frozen.ref_lm is None  # the reference LM is the captioner's own OPT
    total, distinct = device_bytes(shared.frozen)
    assert total == distinct  # the trunk is passed once, as the captioner's
    itm_vision = {p[1] for p, _ in nnx.to_flat_state(shared.frozen.itm) if p[0] == "vision_model"}
    assert itm_vision == {"post_layernorm"}  # the ITM keeps its own final LayerNorm only

    captioner = tiny_captioner()
    apart = A2CStep(A2CConfig(), captioner, value_net(captioner), vlrm_scorer, ROLLOUT,
                    itm=tiny_itm(), ref_lm=tiny_captioner(seed=5).language_model)
    assert not apart.vision_shared and not apart.ref_shared and apart.frozen.ref_lm is not None
    assert "differs" in apart.vision_report.reason
    total, distinct = device_bytes(apart.frozen)
    assert total == distinct


def test_bad_settings_fail_with_the_name():
    captioner = tiny_captioner()
    net = value_net(captioner)
    scorer = TokenCountScorer(20, EOS)
    with pytest.raises(ValueError, match="no_repeat_ngram_size"):
        A2CStep(A2CConfig(), captioner, net, scorer, dataclasses.replace(ROLLOUT, no_repeat_ngram_size=2))
    with pytest.raises(ValueError, match="qformerr"):
        A2CStep(A2CConfig(policy_trainable=("^qformerr/",)), captioner, net, scorer, ROLLOUT)
    with pytest.raises(ValueError, match="estimator"):
        A2CConfig(estimator="ppo")
    step = A2CStep(A2CConfig(micro_batches=3), captioner, net, scorer, ROLLOUT)
    with pytest.raises(ValueError, match="micro-batches"):
        step.step(step.init_state(0), step.frozen, step.shard_batch({"pixels": tiny_pixels(8)}))


# the paper's A2C in `make test`; the other estimators compile a step each (slow)
@pytest.mark.parametrize("estimator", ["a2c", *(pytest.param(name, marks=pytest.mark.slow)
                                                for name in ("scst", "rloo", "grpo", "drgrpo"))])
def test_each_estimator_raises_a_synthetic_reward(estimator):
    """Reward = number of token 20 in the caption (the frozen OPT samples it now and then):
    30 updates of the soft prompt alone must make it clearly more frequent."""
    captioner = tiny_captioner()
    cfg = A2CConfig(estimator=estimator, learning_rate=3e-2, warmup_steps=1, group_size=2)
    step = A2CStep(cfg, captioner, value_net(captioner), TokenCountScorer(20, EOS), ROLLOUT)
    state = step.init_state(0)
    batch = step.shard_batch({"pixels": tiny_pixels(16 // cfg.samples_per_image)})
    rewards = []
    for _ in range(30):
        state, metrics, _ = step.step(state, step.frozen, batch)
        rewards.append(float(metrics["reward/mean"]))
    assert step.step._cache_size() == 1  # one compilation for all 30 steps
    first, last = np.mean(rewards[:5]), np.mean(rewards[-10:])
    # grpo / drgrpo weigh tokens by group statistics alone (no whitening): a pair of captions with
    # the same count gives no signal, and the count reward often ties, so they move slower (grpo
    # +0.69 over the same 30 updates, measured)
    assert last > first + (0.8 if cfg.kind.whiten else 0.5), (first, last, rewards)
    assert int(state.skipped) == 0
