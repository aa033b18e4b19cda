"""The records that cross the step's stages, as pytrees.

`Experience` is the rollout-to-update handoff: what the rollout and the reward produced, all the
update reads. `TrainState` is everything a run must keep to continue (the loop checkpoints it
whole); `FrozenParams` holds the frozen weights, passed to every jitted stage as an argument
that is neither differentiated nor donated.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Experience:
    vision_states: jax.Array  # (R, N, Dv) the captioner's frozen ViT output, one row per caption
    soft_prompt: jax.Array  # (R, Q, E) the rollout policy's soft prompt: the value network's input
    tokens: jax.Array  # (R, T) int32 sampled ids, pad after EOS
    mask: jax.Array  # (R, T) int32: 1 for sampled tokens up to and including EOS
    returns: jax.Array  # (R, T) float32 per-token returns, 0 outside the mask
    baseline: jax.Array | None = None  # (R,) float32 estimator baseline (estimators.py); None: the learned value
    support: jax.Array | None = None  # (R, T, S) int32 sampling support per token (Rollout.support)
    scale: jax.Array | None = None  # (R,) float32 divisor of the advantage (grpo's group std); None: 1
    # filled by the update where its options need them (A2CConfig): log p_old of the rollout
    # policy and V of the rollout's value network (PPO), log p of the initial policy (KL loss)
    old_logp: jax.Array | None = None  # (R, T) float32
    old_values: jax.Array | None = None  # (R, T) float32
    ref_logp: jax.Array | None = None  # (R, T) float32

    @property
    def rows(self) -> int:
        return self.tokens.shape[0]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
    step: jax.Array  # int32: updates attempted (skipped ones included)
    key: jax.Array  # uint32 (2,): base PRNG key; step k samples with fold_in(key, k)
    policy: Any  # nnx.State of the captioner's trainable parameters (fp32)
    value: Any  # nnx.State of the value network's trainable parameters (fp32)
    policy_opt: Any  # optax state of the policy
    value_opt: Any  # optax state of the value network
    skipped: jax.Array  # int32: updates skipped for a non-finite loss or gradient
    skipped_in_row: jax.Array  # int32: consecutive skips up to this step
    initial_policy: Any = None  # nnx.State: the policy as of step 0, for a KL term (a2c.kl_coef > 0)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class FrozenParams:
    policy: Any  # nnx.State: the captioner's frozen parameters (ViT, OPT, ...)
    value: Any  # nnx.State: the value network's frozen parameters (usually empty)
    itm: Any = None  # nnx.State of BLIP2-ITM, trunk arrays shared with the captioner's when equal
    ref_lm: Any = None  # nnx.State of the reference LM; None when it is the captioner's OPT
    clip: Any = None  # nnx.State of OpenCLIP (VLRM-RS)
