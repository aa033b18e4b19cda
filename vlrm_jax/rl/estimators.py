"""Advantage estimators: how a rollout's per-token returns become the weights of the policy pass.

Each estimator is an entry of `ESTIMATORS`: a pure baseline function of the captions' whole
returns, and what the step must provide for it (a value network, N captions per image, a greedy
rollout) as fields the step reads; the step itself has no per-estimator branches.

    a2c     A_k = R_k - V_k                         the paper: a learned value per token
    scst    A_k = R_k - R(greedy caption)           self-critical sequence training
    rloo    A_k = R_k - mean of the other N-1       REINFORCE leave-one-out, N captions per image
    grpo    A_k = (R_k - mean_G) / (std_G + eps)    GRPO: the image's group of N, its mean and std
    drgrpo  A_k = R_k - mean_G                      Dr. GRPO: no division by the group's std

R_k is the caption's return at token k: its reward at the end plus the penalties of the tokens
from k on (gamma 1, so a penalty reaches its token and every token before it); R_0 is the
caption's whole reward. The baselines are statistics of R_0 over the image's group (or the greedy
caption's R_0), subtracted from every token's return: token-level returns, caption-level
baselines, as rloo did here before the grouped estimators came. The paper's whitening, M =
(A - mean A) / std A over every valid token of the batch, follows for a2c, scst and rloo; grpo and
drgrpo use their group statistics alone, as their papers do. Every estimator's policy loss is a
sum over valid tokens divided by the batch's token count, one constant per batch: no caption is
weighted by its own length (the bias Dr. GRPO removes from GRPO's per-caption mean).

The group std is the sample std (ddof 1), as TRL's GRPO trainer computes it; a group whose
captions all got the same reward has advantage 0 in grpo and drgrpo (for grpo the rounding of
equal values' mean is not divided into an advantage of order 1: see SPREAD_FLOOR).

Per-component normalisation (`a2c.component_norm`, any estimator): the reward's terms differ in
spread by orders of magnitude (an ITM logit, a mean log-probability, integer penalty counts), so
the largest one drowns the others in R. With it, each term's per-token return R^c_k (a caption
term at every token, a penalty's suffix sum) becomes (R^c_k - mean_c) / (std_c + eps) before the
weighted sum, mean_c and std_c taken over the term's whole-caption values R^c_0 of the image's
group (grouped estimators, sample std as the group std above) or of the batch (population std).
A term constant over the group contributes 0 (a spread below SPREAD_FLOOR of the values'
magnitude counts as none: it is the rounding of equal values). scst's greedy captions are standardised with
their sampled batch's statistics, so the baseline stays on the returns' scale.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax.numpy as jnp


def rloo_baseline(caption_returns, group_size: int):
    """(R,) -> (R,): each caption's baseline is the mean whole return of the other captions of its
    image (rows i*N .. i*N+N-1 hold image i's N captions)."""
    total = caption_returns.reshape(-1, group_size)
    return ((total.sum(axis=1, keepdims=True) - total) / (group_size - 1)).reshape(-1)


def group_mean(caption_returns, group_size: int):
    """(R,) -> (R,): the mean whole return of each caption's group, itself included."""
    total = caption_returns.reshape(-1, group_size)
    return jnp.broadcast_to(total.mean(axis=1, keepdims=True), total.shape).reshape(-1)


# A spread below this fraction of the values' magnitude is float32 rounding of equal values (their
# mean is not exact), not a spread: dividing by it would turn rounding into advantages of order 1.
SPREAD_FLOOR = 1e-5


def _spread(std, values):
    """std, or 0 where it is below SPREAD_FLOOR of the values' largest magnitude."""
    scale = jnp.max(jnp.abs(values), axis=-1, keepdims=True)
    return jnp.where(std > SPREAD_FLOOR * scale, std, 0.0)


def group_std(caption_returns, group_size: int):
    """(R,) -> (R,): the sample std (ddof 1) of each caption's group (0 for equal values)."""
    total = caption_returns.reshape(-1, group_size)
    std = _spread(total.std(axis=1, ddof=1, keepdims=True), total)
    return jnp.broadcast_to(std, total.shape).reshape(-1)


class Baseline(NamedTuple):
    """What an estimator subtracts from (and divides) every token's return of a caption."""

    offset: jnp.ndarray  # (R,)
    scale: jnp.ndarray | None = None  # (R,): A = (R_k - offset) / scale; None: no division


@dataclasses.dataclass(frozen=True)
class Estimator:
    name: str
    # (caption whole returns (R,), group size N, greedy captions' whole returns (R,) or None, eps)
    # -> Baseline; None: the learned value network gives V_k per token instead
    baseline: Callable | None
    uses_value: bool = False  # a value network is trained beside the policy
    grouped: bool = False  # N captions of every image in the rollout (a2c.group_size)
    greedy_rollout: bool = False  # a greedy caption of every image, scored by the reward
    whiten: bool = True  # then M = (A - mean) / std over the batch's valid tokens (the paper's)


def _scst(caption_returns, group_size, greedy, eps):
    return Baseline(greedy)


def _rloo(caption_returns, group_size, greedy, eps):
    return Baseline(rloo_baseline(caption_returns, group_size))


def _grpo(caption_returns, group_size, greedy, eps):
    # a group without spread gives no signal: divided by inf, not by eps (its tokens' returns
    # still differ by the penalties to go, which eps alone would blow up to ~1e8)
    std = group_std(caption_returns, group_size)
    return Baseline(group_mean(caption_returns, group_size), jnp.where(std > 0, std + eps, jnp.inf))


def _drgrpo(caption_returns, group_size, greedy, eps):
    return Baseline(group_mean(caption_returns, group_size))


ESTIMATORS = {e.name: e for e in (
    Estimator("a2c", None, uses_value=True),
    Estimator("scst", _scst, greedy_rollout=True),
    Estimator("rloo", _rloo, grouped=True),
    Estimator("grpo", _grpo, grouped=True, whiten=False),
    Estimator("drgrpo", _drgrpo, grouped=True, whiten=False),
)}


class TermStats(NamedTuple):
    mean: jnp.ndarray  # (R,): the statistic of each row's group (or of the batch)
    std: jnp.ndarray  # (R,)


def reward_terms(out, returns) -> dict:
    """The reward's terms {name: (signed weight, per-token return)} (`RewardOutput.components`);
    a scorer that gives none is one term, its whole return."""
    return out.components or {"return": (1.0, returns)}


def term_statistics(components: dict, group_size: int) -> dict[str, TermStats]:
    """{term: TermStats} of each term's whole-caption return R^c_0 over the image's group
    (group_size > 1) or over the batch (group_size 1)."""
    out = {}
    for name, (_, term) in components.items():
        whole = term[:, 0]
        if group_size > 1:
            out[name] = TermStats(group_mean(whole, group_size), group_std(whole, group_size))
        else:
            std = _spread(jnp.std(whole), whole)
            out[name] = TermStats(jnp.broadcast_to(jnp.mean(whole), whole.shape), jnp.broadcast_to(std, whole.shape))
    return out


def normalise_components(components: dict, stats: dict, mask, eps: float):
    """(R, T) returns: sum over terms of w_c (R^c_k - mean_c) / (std_c + eps) on valid tokens; a
    term without spread over its group (std 0) contributes 0."""
    valid = mask.astype(jnp.float32)
    total = jnp.zeros(mask.shape, jnp.float32)
    for name, (weight, term) in components.items():
        s = stats[name]
        z = jnp.where(s.std[:, None] > 0, (term - s.mean[:, None]) / (s.std[:, None] + eps), 0.0)
        total = total + weight * z
    return total * valid


def advantages(returns, values=None, offset=None, scale=None):
    """(R, T) advantages from per-token returns and either the value network's V_k (R, T) or a
    caption baseline (R,) with its optional divisor (R,)."""
    if values is not None:
        return returns - values
    adv = returns - offset[:, None]
    return adv if scale is None else adv / scale[:, None]
