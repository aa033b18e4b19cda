"""The whole VLRM reward in one jittable function: generated tokens -> per-token returns.

    R_k = w_sim * (itm_match + rs_weight * Phi) + w_ref * ref - w_noeos * noeos
          - sum_{s>=k} (w_bad * bad_s + w_repeat * repeat_s)

VLRM: rs_weight 0, all weights 1. VLRM-RS: rs_weight 0.3 and w_ref 0 (`RewardConfig.vlrm_rs()`).
Text penalties and retokenisation run on the host per data shard (`retokenize_sharded`); the
model terms run on the devices in the same program.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax.numpy as jnp

from vlrm_jax.rewards.retokenize import Retokenizer, retokenize_sharded
from vlrm_jax.rewards.returns import RewardWeights, compute_returns, term_returns
from vlrm_jax.rewards.similarity import itm_match_logit, reference_logprob, retrieval_specificity


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    weights: RewardWeights = RewardWeights()
    rs_weight: float = 0.0  # weight of Phi inside sim; the paper's VLRM-RS uses 0.3

    @classmethod
    def vlrm(cls, sim_weight: float = 1.0) -> "RewardConfig":
        return cls(weights=RewardWeights(sim=sim_weight))

    @classmethod
    def vlrm_rs(cls, sim_weight: float = 1.0, rs_weight: float = 0.3) -> "RewardConfig":
        return cls(weights=RewardWeights(sim=sim_weight, ref=0.0), rs_weight=rs_weight)


@dataclasses.dataclass(frozen=True)
class RewardModels:
    """The frozen scorers. clip may be None when rs_weight is 0; ref_lm None when w_ref is 0."""

    itm: Any
    ref_lm: Any = None
    clip: Any = None


class RewardOutput(NamedTuple):
    """What `vlrm_reward` gives: returns R (B, T) float32 (zero outside the caption mask), batch
    means for logging (`stats`: sim, ref, noeos, bad, repeat, return, length, itm, phi_std) and
    the inputs of R per caption / token (`parts`: mask, sim, phi, ref, bad, repeat, noeos), and
    each term's own return with its signed weight (`components`, `term_returns`; None: R is one
    term), which per-component normalisation standardises before the weighted sum."""

    returns: Any
    stats: dict
    parts: dict
    components: dict | None = None


def vlrm_reward(
    models: RewardModels,
    cfg: RewardConfig,
    retokenizer: Retokenizer,
    tokens,
    itm_vision_states,
    clip_pixels=None,
    *,
    bos_token_id: int,
    mesh=None,
):
    """tokens (B, T) generated ids (no prompt). itm_vision_states: BLIP2-ITM vision states for the
    same images. clip_pixels: OpenCLIP-preprocessed images (only for rs_weight != 0).
    Returns a `RewardOutput`."""
    host = retokenize_sharded(retokenizer, tokens, mesh=mesh)
    mask = host["mask"]
    sim = itm_match_logit(models.itm, itm_vision_states, host["itm_input_ids"], host["itm_attention_mask"])
    phi = jnp.zeros_like(sim)
    if cfg.rs_weight != 0.0:
        if models.clip is None or clip_pixels is None:
            raise ValueError("rs_weight != 0 needs the CLIP model and clip_pixels")
        phi = retrieval_specificity(models.clip.encode_image(clip_pixels), models.clip.encode_text(host["clip_input_ids"]))
    if cfg.weights.ref != 0.0:
        if models.ref_lm is None:
            raise ValueError("a non-zero ref weight needs the reference LM")
        ref = reference_logprob(models.ref_lm, tokens, mask, bos_token_id)
    else:
        ref = jnp.zeros_like(sim)
    returns, stats = compute_returns(sim + cfg.rs_weight * phi, ref, host["bad"], host["repeat"], host["noeos"], mask, cfg.weights)
    stats = dict(stats, itm=jnp.mean(sim), phi_std=jnp.std(phi))
    parts = dict(mask=mask, sim=sim, phi=phi, ref=ref, bad=host["bad"], repeat=host["repeat"], noeos=host["noeos"])
    w = cfg.weights
    components = term_returns(
        dict(itm=sim, phi=phi, ref=ref, noeos=host["noeos"]), dict(bad=host["bad"], repeat=host["repeat"]),
        dict(itm=w.sim, phi=w.sim * cfg.rs_weight, ref=w.ref, noeos=-w.noeos, bad=-w.bad, repeat=-w.repeat), mask)
    return RewardOutput(returns, stats, parts, components)
