"""The options the field's estimators bring (A2CConfig): per-component reward normalisation, PPO's
reuse of a rollout (epochs, shuffled minibatches, clipped ratio and value loss), KL to the initial
policy (as a loss or in the return) and an entropy bonus. Their formulas against NumPy; through
the step: PPO with one pass and no clipping is today's update, every option gives the same update
whatever the micro-batch split and on 8 devices in two mesh shapes, the initial policy is
checkpointed. Gradients against PyTorch: tests/rl/test_torch_reference.py."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.rl.tiny_steps import EOS, ROLLOUT, snapshot, value_net, vlrm_step
from tests.stacks import tiny_captioner, tiny_pixels
from vlrm_jax import sharding
from vlrm_jax.rewards.returns import RewardWeights, compute_returns, term_returns
from vlrm_jax.rl import estimators, losses, optim, ppo
from vlrm_jax.rl.config import A2CConfig
from vlrm_jax.rl.scoring import TokenCountScorer
from vlrm_jax.rl.step import A2CStep

RNG = np.random.default_rng(0)


# ---------------------------------------------------------------- formulas against NumPy
def test_clipped_policy_loss_equals_numpy():
    logp = np.log(RNG.uniform(0.05, 0.9, size=(4, 6))).astype(np.float32)
    old = (logp + RNG.normal(scale=0.4, size=logp.shape)).astype(np.float32)
    adv = RNG.normal(size=logp.shape).astype(np.float32)
    mask = (RNG.uniform(size=logp.shape) > 0.2).astype(np.int32)
    r = np.exp(logp.astype(np.float64) - old)
    both = np.minimum(r * adv, np.clip(r, 0.8, 1.2) * adv)
    for objective, scale in (("prob", np.exp(old.astype(np.float64))), ("logprob", 1.0)):
        total, clipped = losses.clipped_policy_loss_sum(logp, old, adv, mask, objective, 0.2)
        np.testing.assert_allclose(float(total), -np.sum(scale * both * mask), rtol=1e-5)
        assert float(clipped) == np.sum((np.clip(r, 0.8, 1.2) * adv < r * adv) * mask) > 0
    # unclipped and p_old = p: the paper's -sum p M
    total, clipped = losses.clipped_policy_loss_sum(logp, logp, adv, mask, "prob", 0.0)
    np.testing.assert_allclose(float(total), float(losses.policy_loss_sum(np.exp(logp), logp, adv, mask, "prob")),
                               rtol=1e-6)
    assert float(clipped) == 0


def test_kl_estimators_and_clipped_value_loss_equal_numpy():
    logp = np.log(RNG.uniform(0.05, 0.9, size=(3, 5)))
    ref = np.log(RNG.uniform(0.05, 0.9, size=(3, 5)))
    np.testing.assert_allclose(np.asarray(losses.kl_to_reference(logp, ref, "k1")), logp - ref, rtol=1e-6)
    ratio = np.exp(ref - logp)
    np.testing.assert_allclose(np.asarray(losses.kl_to_reference(logp, ref, "k3")), ratio - np.log(ratio) - 1,
                               rtol=1e-4, atol=1e-6)  # float32: r - log r - 1 cancels near r = 1
    assert np.all(np.asarray(losses.kl_to_reference(logp, ref, "k3")) >= 0)
    returns, values, old = (RNG.normal(size=(3, 5)) for _ in range(3))
    mask = np.ones((3, 5))
    clipped = old + np.clip(values - old, -0.1, 0.1)
    want = np.sum(np.maximum((returns - values) ** 2, (returns - clipped) ** 2))
    np.testing.assert_allclose(float(losses.value_loss_sum(returns, values, mask, old, 0.1)), want, rtol=1e-6)
    np.testing.assert_allclose(float(losses.value_loss_sum(returns, values, mask)), np.sum((returns - values) ** 2),
                               rtol=1e-6)


def _vlrm_terms(rows=8, length=6):
    sim, ref, noeos = RNG.normal(size=rows), -RNG.uniform(1, 4, size=rows), (RNG.uniform(size=rows) > 0.7) * 1.0
    bad, repeat = (RNG.uniform(size=(rows, length)) > 0.8) * 1.0, (RNG.uniform(size=(rows, length)) > 0.7) * 1.0
    lengths = RNG.integers(2, length + 1, size=rows)
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    return sim, ref, noeos, bad, repeat, mask


def test_the_reward_terms_add_up_to_the_returns():
    sim, ref, noeos, bad, repeat, mask = _vlrm_terms()
    w = RewardWeights(sim=1.3, ref=0.7, noeos=2.0, bad=0.5, repeat=1.5)
    returns, _ = compute_returns(sim, ref, bad, repeat, noeos, mask, w)
    terms = term_returns(dict(itm=sim, ref=ref, noeos=noeos), dict(bad=bad, repeat=repeat),
                         dict(itm=w.sim, ref=w.ref, noeos=-w.noeos, bad=-w.bad, repeat=-w.repeat), mask)
    np.testing.assert_allclose(sum(np.asarray(t) * wt for wt, t in terms.values()), returns, rtol=1e-5, atol=1e-6)
    assert set(term_returns(dict(itm=sim), {}, dict(itm=0.0), mask)) == set()  # a weight-0 term is left out


@pytest.mark.parametrize("group", [1, 4])
def test_component_normalisation_equals_numpy(group):
    sim, ref, noeos, bad, repeat, mask = _vlrm_terms()
    weights = dict(itm=1.0, ref=0.5, noeos=-1.0, bad=-1.0, repeat=-2.0)
    terms = term_returns(dict(itm=sim, ref=ref, noeos=noeos), dict(bad=bad, repeat=repeat), weights, mask)
    got = estimators.normalise_components(terms, estimators.term_statistics(terms, group), mask, 1e-8)
    want = np.zeros(mask.shape)
    for name, (w, term) in terms.items():
        term = np.asarray(term, np.float64)
        whole = term[:, 0].reshape(-1, group)
        if group > 1:
            mean, std = whole.mean(1, keepdims=True), whole.std(1, ddof=1, keepdims=True)
        else:
            mean, std = whole.mean(keepdims=True), whole.std(keepdims=True)
        mean, std = (np.broadcast_to(x, whole.shape).reshape(-1, 1) for x in (mean, std))
        want += w * (term - mean) / (std + 1e-8)
    np.testing.assert_allclose(np.asarray(got), want * mask, rtol=1e-4, atol=1e-5)


def test_the_minibatch_plan_deals_every_row_once_per_epoch_by_the_key():
    plan = np.asarray(ppo.minibatch_plan(jax.random.PRNGKey(3), 12, epochs=3, minibatches=4))
    assert plan.shape == (12, 3)  # 3 epochs x 4 minibatches; 3 blocks of 4 rows
    rows = plan + 4 * np.arange(3)[None]  # minibatch j's row of block q
    for e in range(3):
        assert sorted(rows[e * 4:(e + 1) * 4].ravel()) == list(range(12))  # every row once per epoch
    assert not np.array_equal(plan[:4], plan[4:8])  # each epoch its own order
    np.testing.assert_array_equal(plan, ppo.minibatch_plan(jax.random.PRNGKey(3), 12, 3, 4))
    assert not np.array_equal(plan, ppo.minibatch_plan(jax.random.PRNGKey(4), 12, 3, 4))
    with pytest.raises(ValueError, match="12 rollout rows do not split into a2c.minibatches=5"):
        ppo.minibatch_plan(jax.random.PRNGKey(3), 12, 1, 5)
    # taking a minibatch is exact for every dtype, infinities included (grpo's scale)
    record = {"x": np.arange(24, dtype=np.float32).reshape(12, 2), "i": np.arange(12, dtype=np.int32) - 1,
              "inf": np.where(np.arange(12) % 2, np.inf, 1.0).astype(np.float32)}
    got = ppo.take_rows(record, jnp.asarray(plan[5]), 4)
    for name, value in record.items():
        np.testing.assert_array_equal(np.asarray(got[name]), value[rows[5]])
        assert got[name].dtype == value.dtype


def test_config_checks_name_the_bad_key():
    with pytest.raises(ValueError, match="kl_estimator='k2'"):
        A2CConfig(kl_estimator="k2")
    with pytest.raises(ValueError, match="kl_in='advantage'"):
        A2CConfig(kl_in="advantage")
    with pytest.raises(ValueError, match="epochs=0"):
        A2CConfig(epochs=0)
    with pytest.raises(ValueError, match="clip_eps=-0.1"):
        A2CConfig(clip_eps=-0.1)
    with pytest.raises(ValueError, match="value_clip=0.2: grpo trains no value network"):
        A2CConfig(estimator="grpo", value_clip=0.2)
    assert not A2CConfig().reuses_rollout and A2CConfig(epochs=2).reuses_rollout
    assert A2CConfig(clip_eps=0.2).reuses_rollout and not A2CConfig().keeps_initial_policy


# ---------------------------------------------------------------- through the step
def _experience(estimator, images, seed=0, **options):
    """A rollout of the tiny captioner with random returns (so groups and tokens differ), and a
    state whose initial policy lies a little away from the policy (so a KL term is not zero)."""
    captioner = tiny_captioner()
    cfg = A2CConfig(estimator=estimator, group_size=4, learning_rate=1e-3, **options)
    step = A2CStep(cfg, captioner, value_net(captioner), TokenCountScorer(20, EOS), ROLLOUT)
    state = step.init_state(seed)
    exp, _, _ = step.experience(state, step.frozen, {"pixels": tiny_pixels(images)})
    rng = np.random.default_rng(seed)
    returns = (rng.normal(size=exp.returns.shape) * np.asarray(exp.mask)).astype(np.float32)
    exp = dataclasses.replace(exp, returns=jnp.asarray(returns))
    if cfg.kind.baseline is not None:
        offset, scale = cfg.kind.baseline(exp.returns[:, 0], cfg.samples_per_image, None, cfg.group_eps)
        exp = dataclasses.replace(exp, baseline=offset, scale=scale)
    if state.initial_policy is not None:
        leaves, tree = jax.tree.flatten(state.initial_policy)
        keys = jax.random.split(jax.random.PRNGKey(9), len(leaves))
        moved = [x + 0.05 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
        state = dataclasses.replace(state, initial_policy=jax.tree.unflatten(tree, moved))
    return captioner, step, state, exp


def _update(captioner, step, state, exp, **changes):
    s = A2CStep(dataclasses.replace(step.cfg, **changes), captioner, value_net(captioner), step.scorer, ROLLOUT)
    return s.update(jax.tree.map(jnp.copy, state), s.frozen, exp)


# The Q-Former's key biases have gradient 0 in exact arithmetic (a softmax ignores a shift shared
# by every key), so theirs is rounding noise of order 1e-9, and Adam (eps 1e-8) turns a different
# rounding into a different step of up to lr = 1e-3: after four updates they differ by ~1e-4
# between summation orders, while every other parameter agrees to 1e-6.
ZERO_GRADIENT = "['key']['bias']"


def _assert_same(a, b, rtol=1e-5, atol=1e-7):
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(snapshot(a))[0], jax.tree.leaves(snapshot(b))):
        name = jax.tree_util.keystr(path)
        np.testing.assert_allclose(y, x, rtol=rtol, atol=3e-4 if ZERO_GRADIENT in name else atol, err_msg=name)


def test_ppo_with_one_pass_and_no_clipping_is_the_single_update():
    """The PPO path (p_old and V_old from forward passes, the ratio objective) with epochs=1,
    minibatches=1 and a clip too wide to act gives the paper's update."""
    captioner, step, state, exp = _experience("a2c", 8, micro_batches=2)
    single, m1 = _update(captioner, step, state, exp)
    reused, m2 = _update(captioner, step, state, exp, clip_eps=100.0)
    assert float(m2["policy/clip_fraction"]) == 0.0
    _assert_same((single.policy, single.value), (reused.policy, reused.value), rtol=1e-4, atol=1e-6)
    for name in ("loss/policy", "loss/value", "advantage/mean", "advantage/std"):
        np.testing.assert_allclose(float(m2[name]), float(m1[name]), rtol=1e-4, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("estimator, options", [
    ("a2c", dict(value_clip=0.5, kl_coef=0.2, kl_estimator="k3", entropy_coef=0.01)),
    ("grpo", dict(kl_coef=0.2, kl_estimator="k1")),
])
def test_ppo_updates_are_exact_under_micro_batches(estimator, options):
    """Two epochs of two minibatches (four optimizer steps), clipped: the same parameters at 1, 2
    and 4 micro-batches, the advantages' statistics those of NumPy over the whole rollout."""
    images = 16 if estimator == "a2c" else 4
    captioner, step, state, exp = _experience(estimator, images, epochs=2, minibatches=2, clip_eps=0.2, **options)
    mask = np.asarray(exp.mask) > 0
    if estimator == "grpo":
        whole = np.asarray(exp.returns)[:, 0].reshape(-1, 4).astype(np.float64)
        adv = (np.asarray(exp.returns) - np.repeat(whole.mean(1), 4)[:, None]) / (
            np.repeat(whole.std(1, ddof=1), 4)[:, None] + 1e-4)
    else:
        adv = np.asarray(exp.returns) - np.asarray(step.values(state, step.frozen, exp))
    results = {}
    for m in (1, 2, 4):
        new, metrics = _update(captioner, step, state, exp, micro_batches=m)
        results[m] = (new.policy, new.value)
        assert int(optim.updates_done(new.policy_opt)) == 4 and int(new.step) == 1
        assert 0.0 <= float(metrics["policy/clip_fraction"]) < 1.0 and float(metrics["kl/mean"]) != 0.0
        np.testing.assert_allclose(float(metrics["advantage/mean"]), adv[mask].mean(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(float(metrics["advantage/std"]), adv[mask].std(), rtol=1e-4)
    moved = [float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(snapshot(results[1][0])),
                                                        jax.tree.leaves(snapshot(state.policy)))]
    assert max(moved) > 0
    for m in (2, 4):
        _assert_same(results[1], results[m], rtol=1e-4, atol=1e-6)


def test_kl_in_the_reward_is_a_penalty_to_go():
    """kl_in="reward": every token's return loses kl_coef times the KL estimates from it to the
    caption's end, the estimates those of the policy against the initial policy."""
    captioner, step, state, _ = _experience("scst", 8, kl_coef=0.5, kl_in="reward", kl_estimator="k1")
    plain = A2CStep(dataclasses.replace(step.cfg, kl_coef=0.0), captioner, value_net(captioner), step.scorer, ROLLOUT)
    batch = {"pixels": tiny_pixels(8)}
    exp, metrics, _ = step.experience(state, step.frozen, batch)
    base, _, _ = plain.experience(dataclasses.replace(state, initial_policy=None), plain.frozen, batch)
    mask = np.asarray(exp.mask)
    logp = np.asarray(jax.jit(step._forward_logp)(state.policy, step.frozen, exp))
    ref = np.asarray(jax.jit(step._forward_logp)(state.initial_policy, step.frozen, exp))
    kl = (logp - ref) * mask
    want = np.asarray(base.returns) - 0.5 * np.cumsum(kl[:, ::-1], axis=1)[:, ::-1] * mask
    np.testing.assert_allclose(np.asarray(exp.returns), want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(float(metrics["kl/mean"]), kl.sum() / mask.sum(), rtol=1e-4, atol=1e-6)
    assert np.abs(kl).max() > 0


def test_the_initial_policy_is_checkpointed(tmp_path):
    from vlrm_jax.rl.checkpoint import Checkpoints

    captioner, step, state, _ = _experience("grpo", 4, kl_coef=0.1)
    ckpt = Checkpoints(tmp_path / "c", asynchronous=False)
    ckpt.save(1, state, {"step": 1})
    restored, _ = ckpt.restore(step.init_state(5))
    ckpt.close()
    _assert_same(state.initial_policy, restored.initial_policy, rtol=0, atol=0)
    assert step.init_state(0).initial_policy is not None
    assert A2CStep(A2CConfig(), captioner, value_net(captioner), step.scorer, ROLLOUT).init_state(0).initial_policy is None


# ---------------------------------------------------------------- on 8 devices
MESH_OPTIONS = {
    "grpo": A2CConfig(estimator="grpo", group_size=4, component_norm=True, epochs=2, minibatches=2, clip_eps=0.2,
                      kl_coef=0.1, kl_in="reward", learning_rate=1e-3, warmup_steps=2),
    "a2c": A2CConfig(component_norm=True, epochs=2, minibatches=2, clip_eps=0.2, value_clip=0.5, kl_coef=0.1,
                     entropy_coef=0.01, learning_rate=1e-3, warmup_steps=2),
}


# grpo (group statistics and the minibatch select across devices) in `make test`; a2c's options
# (value clip, KL loss, entropy) on meshes compile three more steps (slow)
@pytest.mark.parametrize("name", ["grpo", pytest.param("a2c", marks=pytest.mark.slow)])
def test_every_option_gives_the_single_device_step_on_two_meshes(vlrm_scorer, name):
    """The whole VLRM step (rollout, reward normalised term by term, PPO over minibatches, KL)
    on (8, 1, 1) and (2, 2, 2) meshes of fake CPU devices: the one device's parameters and metrics."""
    cfg = MESH_OPTIONS[name]
    pixels = tiny_pixels(16 // cfg.samples_per_image * 2)  # 16 or 32 captions
    out = {}
    for shape in (None, (8, 1, 1), (2, 2, 2)):
        mesh = None if shape is None else sharding.make_mesh(shape, devices=jax.devices()[:8])
        step = vlrm_step(vlrm_scorer, mesh, cfg)
        state, metrics, _ = step.step(step.init_state(0), step.frozen, step.shard_batch({"pixels": pixels}))
        out[shape] = (snapshot((state.policy, state.value)), jax.tree.map(float, metrics))
    single, single_metrics = out[None]
    assert single_metrics["update_ok"] == 1.0 and "kl/mean" in single_metrics
    for shape in ((8, 1, 1), (2, 2, 2)):
        params, metrics = out[shape]
        _assert_same(single, params, rtol=1e-4, atol=1e-6)
        for key, value in single_metrics.items():
            np.testing.assert_allclose(metrics[key], value, rtol=1e-4, atol=1e-5, err_msg=f"{shape} {key}")


def test_main_config_names_the_estimator_key_and_the_minibatch_split():
    from tests.rl.test_faults import _cfg
    from vlrm_jax.rl import run
    from vlrm_jax.rl.run import ConfigError

    for key, value, named in (("a2c.kl_estimator", "k2", "a2c.kl_estimator"), ("a2c.kl_in", "value", "a2c.kl_in"),
                              ("a2c.estimator", "ppo", "a2c.estimator"), ("a2c.value_clip", -1.0, "a2c.value_clip")):
        with pytest.raises(ConfigError) as e:
            run.validate(_cfg("runs/x", **{key: value}))
        assert e.value.key == named, (key, e.value.key)
    with pytest.raises(ConfigError, match="32 captions per rollout do not split into a2c.minibatches=3 x "
                                          "a2c.micro_batches=2"):
        run.validate(_cfg("runs/x", **{"a2c.estimator": "grpo", "a2c.group_size": 2, "a2c.minibatches": 3}))
    parts = run.validate(_cfg("runs/x", **{"a2c.epochs": 2, "a2c.minibatches": 2, "a2c.clip_eps": 0.2}))
    assert parts.a2c.reuses_rollout


MAIN_OPTIONS = {
    "grpo": ("--config.a2c.estimator=grpo", "--config.a2c.group_size=2", "--config.a2c.component_norm=True",
             "--config.a2c.epochs=2", "--config.a2c.minibatches=2", "--config.a2c.clip_eps=0.2",
             "--config.a2c.kl_coef=0.1", "--config.a2c.entropy_coef=0.01"),
    # 16 captions in 2 minibatches: one micro-batch each, so that 8 rows meet the 8 devices
    "a2c": ("--config.a2c.micro_batches=1", "--config.a2c.component_norm=True", "--config.a2c.epochs=2",
            "--config.a2c.minibatches=2",
            "--config.a2c.clip_eps=0.2", "--config.a2c.value_clip=0.5", "--config.a2c.kl_coef=0.1",
            "--config.a2c.kl_in=reward", "--config.a2c.kl_estimator=k1"),
}


@pytest.mark.slow  # three main.py runs each: compiles
@pytest.mark.parametrize("name", sorted(MAIN_OPTIONS))
def test_main_trains_with_every_option_and_resumes_exactly(tmp_path, name):
    """main.py on the tiny config with PPO (over grpo with a KL loss and an entropy bonus; over
    a2c with a clipped value loss and a k1 KL in the return), per-component normalisation, from
    the command line; stopped at step 2 and resumed, it logs what the uninterrupted run logs (the
    initial policy comes back from the checkpoint)."""
    from tests.rl.main_runs import main, metrics

    options = MAIN_OPTIONS[name] + ("--config.checkpoint_every=2",)
    main(tmp_path / "straight", *options, "--config.total_steps=4")
    main(tmp_path / "resumed", *options, "--config.total_steps=2")
    main(tmp_path / "resumed", *options, "--config.total_steps=4")
    straight, resumed = metrics(tmp_path / "straight"), metrics(tmp_path / "resumed")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    assert all(r["update_ok"] == 1.0 and "kl/mean" in r and "policy/clip_fraction" in r for r in straight)
    # after the first of a step's four updates the policy has left its start (k3 is never
    # negative); in the return, the KL of step 1's rollout is that of the initial policy itself
    if name == "grpo":
        assert all(r["kl/mean"] > 0 for r in straight)
    else:
        assert straight[0]["kl/mean"] == 0.0 and all(r["kl/mean"] != 0 for r in straight[1:])
    for a, b in zip(straight, resumed):
        assert a == b
