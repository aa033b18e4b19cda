"""What scores a rollout inside the jitted step: the VLRM reward, or any function of the tokens.

A scorer is called as `scorer(models, tokens, itm_states, batch, mesh) -> RewardOutput` with the
frozen reward models (`RewardModels`, already merged), the sampled ids (R, T), BLIP2-ITM's vision
states for the same rows, the batch's other arrays (e.g. `clip_pixels`) and the mesh. It must be
jittable and hashable (a frozen dataclass compared by identity).
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from vlrm_jax.rewards.reward import RewardConfig, RewardOutput, vlrm_reward
from vlrm_jax.rewards.retokenize import Retokenizer
from vlrm_jax.rewards.returns import suffix_sum


@dataclasses.dataclass(frozen=True, eq=False)
class VlrmScorer:
    """The paper's reward (VLRM, or VLRM-RS with `RewardConfig.vlrm_rs()`)."""

    cfg: RewardConfig
    retokenizer: Retokenizer
    bos_token_id: int

    @property
    def max_new_tokens(self) -> int:
        return self.retokenizer.max_new_tokens

    @property
    def needs(self) -> tuple[str, ...]:
        """Reward models this configuration reads."""
        need = ("itm",)
        if self.cfg.weights.ref != 0.0:
            need += ("ref_lm",)
        if self.cfg.rs_weight != 0.0:
            need += ("clip",)
        return need

    def __call__(self, models, tokens, itm_states, batch, mesh) -> RewardOutput:
        return vlrm_reward(models, self.cfg, self.retokenizer, tokens, itm_states, batch.get("clip_pixels"),
                           bos_token_id=self.bos_token_id, mesh=mesh)


@dataclasses.dataclass(frozen=True, eq=False)
class TokenCountScorer:
    """A synthetic reward with a known optimum: +1 for every `target` token, so R_k counts the
    target tokens from k to the caption's end. For tests and sanity runs of the update."""

    target: int
    eos_token_id: int
    needs: tuple[str, ...] = ()

    def __call__(self, models, tokens, itm_states, batch, mesh) -> RewardOutput:
        is_eos = (tokens == self.eos_token_id).astype(jnp.int32)
        mask = ((jnp.cumsum(is_eos, axis=1) - is_eos) == 0).astype(jnp.float32)
        hits = (tokens == self.target).astype(jnp.float32) * mask
        returns = suffix_sum(hits) * mask
        stats = {"target_count": jnp.mean(jnp.sum(hits, axis=1))}
        return RewardOutput(returns, stats, {"mask": mask, "hits": hits})
