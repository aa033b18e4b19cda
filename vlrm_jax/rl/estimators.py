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
captions all got the same reward has advantage 0 in grpo and drgrpo.
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


def group_std(caption_returns, group_size: int):
    """(R,) -> (R,): the sample std (ddof 1) of each caption's group."""
    total = caption_returns.reshape(-1, group_size)
    return jnp.broadcast_to(total.std(axis=1, ddof=1, keepdims=True), total.shape).reshape(-1)


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
    return Baseline(group_mean(caption_returns, group_size), group_std(caption_returns, group_size) + eps)


def _drgrpo(caption_returns, group_size, greedy, eps):
    return Baseline(group_mean(caption_returns, group_size))


ESTIMATORS = {e.name: e for e in (
    Estimator("a2c", None, uses_value=True),
    Estimator("scst", _scst, greedy_rollout=True),
    Estimator("rloo", _rloo, grouped=True),
    Estimator("grpo", _grpo, grouped=True, whiten=False),
    Estimator("drgrpo", _drgrpo, grouped=True, whiten=False),
)}


def advantages(returns, values=None, offset=None, scale=None):
    """(R, T) advantages from per-token returns and either the value network's V_k (R, T) or a
    caption baseline (R,) with its optional divisor (R,)."""
    if values is not None:
        return returns - values
    adv = returns - offset[:, None]
    return adv if scale is None else adv / scale[:, None]
