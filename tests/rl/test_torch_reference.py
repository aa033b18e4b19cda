"""The JAX step's gradients equal a PyTorch A2C built from transformers' BLIP2, peft's LoRA and
transformers' OPT layers, on the same weights, sampled tokens and returns (fp32, 1e-4 relative)."""
import dataclasses

import numpy as np
import pytest

from tests import factories as F
from vlrm_jax.testing import torch_step as ref
from tests.rl.conftest import flax_captioner_from_hf, random_value_network

REL = 1e-4


def _all_close(got: dict, want: dict):
    """Per tensor, max |diff| <= 1e-4 of its largest entry. Gradients that are zero in exact
    arithmetic (the Q-Former's key biases: a softmax ignores a shift shared by all keys) are
    rounding noise, so a tensor's scale is floored at 1e-3 of the network's largest gradient."""
    floor = 1e-3 * max(float(np.max(np.abs(w))) for w in want.values())
    for name, w in want.items():
        scale = max(float(np.max(np.abs(w))), floor)
        diff = float(np.max(np.abs(np.asarray(got[name]) - w)))
        assert diff <= REL * scale, f"{name}: max |diff| {diff:.3g} vs max |grad| {scale:.3g}"


VALUE = dict(lora_rank=3, lora_alpha=5.0, lora_targets=("q_proj", "v_proj", "fc1"), head_layers=2, head_mlp_ratio=3)


def _setup(hf, cfg):
    """(captioner, step, state, value config, flat value params, rollout config, pixels, exp with
    random returns) on the transformers BLIP2 `hf` converted."""
    from vlrm_jax.generate.config import GenerationConfig
    from vlrm_jax.models import build
    from vlrm_jax.models.value import ValueConfig
    from vlrm_jax.rl.scoring import TokenCountScorer
    from vlrm_jax.rl.step import A2CStep

    captioner = flax_captioner_from_hf(hf)
    vcfg = ValueConfig(**VALUE)
    value_net = random_value_network(vcfg, captioner.cfg.text)
    flat_value = {p: np.asarray(v) for p, v in build.flat_params(value_net).items()}
    rollout = GenerationConfig.paper_rollout(max_new_tokens=10)
    step = A2CStep(cfg, captioner, value_net, TokenCountScorer(target=7, eos_token_id=2), rollout)
    state = step.init_state(0)
    pixels = F.random_pixels(8, seed=3)
    exp, _, _ = step.experience(state, step.frozen, {"pixels": pixels})
    mask = np.asarray(exp.mask)
    assert 0 < mask[:, -1].sum() < 8, "want both early-ending and full-length captions"
    returns = (np.random.default_rng(4).normal(size=mask.shape) * mask).astype(np.float32)
    return captioner, step, state, vcfg, flat_value, rollout, pixels, dataclasses.replace(exp, returns=returns)


def _assert_match(hf, captioner, vcfg, trunk, head, grads_p, grads_v, metrics, policy_loss, value_loss):
    """The step's losses and every policy and value gradient against torch's after backward()."""
    from convert import blip2 as blip2_conv
    from convert.table import expand, flax_to_torch
    from flax import nnx

    np.testing.assert_allclose(float(metrics["loss/policy"]), policy_loss.item(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(float(metrics["loss/value"]), value_loss.item(), rtol=1e-4)
    flat_p = {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(grads_p)}
    entries = [e for e in expand(blip2_conv.table(captioner.cfg), blip2_conv.layer_sets(captioner.cfg)) if e.target in flat_p]
    named = flax_to_torch(flat_p, entries)
    hf_params = dict(hf.named_parameters())
    assert {n.split(".")[0] for n in named} == {"query_tokens", "qformer", "language_projection"}
    _all_close(named, {name: hf_params[name].grad.numpy() for name in named})
    want_v = ref.value_gradients_to_jax_paths(trunk, head, vcfg)
    flat_v = {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(grads_v)}
    assert set(flat_v) == set(want_v)
    _all_close(flat_v, want_v)
    assert all(float(np.abs(g).max()) > 0 for g in flat_v.values())  # every gradient is exercised


@pytest.mark.parametrize("prob,objective,micro", [("sampled", "prob", 2), ("tempered", "logprob", 1), ("raw", "prob", 4)])
def test_gradients_equal_pytorch_reference(hf_blip2, prob, objective, micro):
    from vlrm_jax.rl.config import A2CConfig

    cfg = A2CConfig(prob=prob, objective=objective, micro_batches=micro, logit_chunk=4)
    captioner, step, state, vcfg, flat_value, rollout, pixels, exp = _setup(hf_blip2, cfg)
    grads_p, grads_v, metrics = step.gradients(state, step.frozen, exp)

    trunk, head = ref.value_network(hf_blip2, vcfg, flat_value)
    hf_blip2.zero_grad()
    policy_loss, value_loss = ref.a2c_losses(hf_blip2, trunk, head, pixels, exp.tokens, np.asarray(exp.mask),
                                             exp.returns, prob=prob, objective=objective,
                                             temperature=rollout.temperature, top_k=rollout.top_k,
                                             eps=cfg.advantage_eps)
    (policy_loss + value_loss).backward()
    _assert_match(hf_blip2, captioner, vcfg, trunk, head, grads_p, grads_v, metrics, policy_loss, value_loss)


@pytest.mark.parametrize("objective,kl_estimator", [("prob", "k3"), ("logprob", "k1")])
def test_ppo_kl_and_entropy_gradients_equal_pytorch_reference(hf_blip2, objective, kl_estimator):
    """PPO's clipped ratio and clipped value loss, a KL term to a reference policy and an entropy
    bonus, with p_old, V_old and p_ref spread around today's values so that clipping is active on
    some tokens and not on others: the step's gradients equal torch's from the papers' formulas."""
    import jax

    from vlrm_jax.rl.config import A2CConfig

    cfg = A2CConfig(objective=objective, micro_batches=2, logit_chunk=4, clip_eps=0.2, value_clip=0.1,
                    kl_coef=0.3, kl_estimator=kl_estimator, entropy_coef=0.05)
    captioner, step, state, vcfg, flat_value, rollout, pixels, exp = _setup(hf_blip2, cfg)
    mask = np.asarray(exp.mask)
    rng = np.random.default_rng(5)  # not the returns' draws: spreads unrelated to the advantages
    logp = np.asarray(jax.jit(step._forward_logp)(state.policy, step.frozen, exp))
    values = np.asarray(step.values(state, step.frozen, exp))
    old_logp = (logp + rng.normal(scale=0.3, size=mask.shape)).astype(np.float32)
    ref_logp = (logp + rng.normal(scale=0.5, size=mask.shape)).astype(np.float32)
    old_values = (values + rng.normal(scale=0.2, size=mask.shape)).astype(np.float32)
    exp = dataclasses.replace(exp, old_logp=old_logp, ref_logp=ref_logp, old_values=old_values)
    grads_p, grads_v, metrics = step.gradients(state, step.frozen, exp)
    assert 0.1 < float(metrics["policy/clip_fraction"]) < 0.9, "want clipped and unclipped tokens"

    trunk, head = ref.value_network(hf_blip2, vcfg, flat_value)
    hf_blip2.zero_grad()
    policy_loss, value_loss = ref.a2c_losses(
        hf_blip2, trunk, head, pixels, exp.tokens, mask, exp.returns, prob=cfg.prob, objective=objective,
        temperature=rollout.temperature, top_k=rollout.top_k, eps=cfg.advantage_eps, old_logp=old_logp,
        clip_eps=cfg.clip_eps, old_values=old_values, value_clip=cfg.value_clip, ref_logp=ref_logp,
        kl_coef=cfg.kl_coef, kl_estimator=kl_estimator, entropy_coef=cfg.entropy_coef)
    (policy_loss + value_loss).backward()
    _assert_match(hf_blip2, captioner, vcfg, trunk, head, grads_p, grads_v, metrics, policy_loss, value_loss)
