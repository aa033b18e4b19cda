"""Settings of the A2C update, with the paper's values as defaults.

Every choice the paper leaves open is a field here; docs/architecture.md ("The A2C step") says
which reading each default takes and why.
"""
from __future__ import annotations

import dataclasses

from vlrm_jax.models import blip2
from vlrm_jax.rl import estimators

ESTIMATORS = tuple(estimators.ESTIMATORS)
PROB_DISTRIBUTIONS = ("sampled", "tempered", "raw")
OBJECTIVES = ("prob", "logprob")
CLIP_MODES = ("joint", "per_network")
# Where the data-parallel devices' gradients meet: once per step (each device sums its own rows'
# gradients over the micro-batches first), or where XLA puts it by itself, inside every micro-batch
# (and inside the layer loop, for gradients that arise per layer).
GRAD_REDUCES = ("step", "micro_batch")
KL_ESTIMATORS = ("k1", "k3")
KL_PLACES = ("loss", "reward")

# Path regexes (parameter paths joined by "/") of what each network trains. The policy: the
# captioner's parts the paper trains (query tokens, Q-Former, language projection).
POLICY_TRAINABLE = tuple(rf"^{name}(/|$)" for name in blip2.POLICY_TRAINABLE)
VALUE_TRAINABLE = (r"^lora/", r"^head/")


@dataclasses.dataclass(frozen=True)
class A2CConfig:
    # a2c: learned value; scst: greedy caption's reward; rloo: leave-one-out; grpo / drgrpo: the
    # image's group mean (grpo also divides by its std). vlrm_jax/rl/estimators.py has each one.
    estimator: str = "a2c"
    # p_k: the probability of the sampled token under the distribution the rollout drew it from
    # (temperature, then top-k renormalised), under the tempered softmax, or under the raw softmax.
    prob: str = "sampled"
    objective: str = "prob"  # the paper's L_p = -mean p_k M_k; "logprob": -mean log p_k M_k
    # prob="sampled" with top-k: p_k from the logits of the ids the rollout's top-k kept (it records
    # them), not from the whole vocabulary. The same p_k; False projects onto every id (reference).
    support_only: bool = True
    micro_batches: int = 1
    learning_rate: float = 1e-5
    warmup_steps: int = 20
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    clip_norm: float = 1.0
    clip_mode: str = "joint"
    advantage_eps: float = 1e-8  # M = (A - mean) / (std + eps)
    # the eps of grpo's group std and of per-component normalisation, TRL's: spreads of a few
    # captions can cancel to rounding, which 1e-8 would blow up into advantages of 1e5
    group_eps: float = 1e-4
    group_size: int = 4  # captions per image for the grouped estimators (rloo, grpo, drgrpo)
    logit_chunk: int = 16  # caption positions per chunk of the vocabulary projection
    remat: bool = True  # recompute each OPT layer in the backward passes
    grad_reduce: str = "step"
    # Each reward term standardised over the image's group (grouped estimators) or the batch
    # before the weighted sum (estimators.normalise_components).
    component_norm: bool = False
    # PPO-style reuse of a rollout: `epochs` passes over it in `minibatches` shuffled minibatches,
    # one optimizer step each. clip_eps > 0 clips the ratio p_k / p_old_k (p_old under the same
    # distribution as p_k, from a forward pass before the first minibatch); value_clip > 0 keeps
    # V within value_clip of the rollout's V in the value loss, as PPO does.
    epochs: int = 1
    minibatches: int = 1
    clip_eps: float = 0.0
    value_clip: float = 0.0
    # KL to the initial policy (its trainable parts as of step 0, kept in the training state):
    # k1 = log p - log p_ref or k3 = r - log r - 1 with r = p_ref / p, per token, weighted by
    # kl_coef, added to the policy loss ("loss", as GRPO) or taken off the return ("reward", as
    # PPO for RLHF). entropy_coef rewards the entropy of the distribution p_k is taken under.
    kl_coef: float = 0.0
    kl_estimator: str = "k3"
    kl_in: str = "loss"
    entropy_coef: float = 0.0
    policy_trainable: tuple[str, ...] = POLICY_TRAINABLE
    value_trainable: tuple[str, ...] = VALUE_TRAINABLE

    def __post_init__(self):
        def check(name, allowed):
            if getattr(self, name) not in allowed:
                raise ValueError(f"a2c {name}={getattr(self, name)!r}: expected one of {allowed}")

        check("estimator", ESTIMATORS)
        check("prob", PROB_DISTRIBUTIONS)
        check("objective", OBJECTIVES)
        check("clip_mode", CLIP_MODES)
        check("grad_reduce", GRAD_REDUCES)
        check("kl_estimator", KL_ESTIMATORS)
        check("kl_in", KL_PLACES)
        for name in ("micro_batches", "logit_chunk", "epochs", "minibatches"):
            if getattr(self, name) < 1:
                raise ValueError(f"a2c {name}={getattr(self, name)}: must be >= 1")
        if self.warmup_steps < 0:
            raise ValueError(f"a2c warmup_steps={self.warmup_steps}: must be >= 0")
        if self.learning_rate <= 0 or self.clip_norm <= 0:
            raise ValueError("a2c learning_rate and clip_norm must be > 0")
        for name in ("clip_eps", "value_clip", "kl_coef", "entropy_coef"):
            if getattr(self, name) < 0:
                raise ValueError(f"a2c {name}={getattr(self, name)}: must be >= 0")
        if self.value_clip and not self.uses_value:
            raise ValueError(f"a2c value_clip={self.value_clip}: {self.estimator} trains no value network")
        if self.kind.grouped and self.group_size < 2:
            raise ValueError(f"a2c group_size={self.group_size}: {self.estimator} compares the captions of an "
                             "image, so it needs >= 2")

    @property
    def kind(self) -> estimators.Estimator:
        """The estimator's entry: what it needs from the step."""
        return estimators.ESTIMATORS[self.estimator]

    @property
    def uses_value(self) -> bool:
        return self.kind.uses_value

    @property
    def reuses_rollout(self) -> bool:
        """Whether the update runs the PPO path (a forward pass for p_old, minibatches, clipping);
        epochs=1, minibatches=1 and no clipping is the paper's single update."""
        return self.epochs > 1 or self.minibatches > 1 or self.clip_eps > 0 or self.value_clip > 0

    @property
    def keeps_initial_policy(self) -> bool:
        return self.kl_coef > 0

    @property
    def samples_per_image(self) -> int:
        return self.group_size if self.kind.grouped else 1
