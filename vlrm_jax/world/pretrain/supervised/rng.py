"""Randomness per step, a pure function of (seed, step): a resumed run draws what it would have."""
from __future__ import annotations

import jax
import numpy as np


def step_rng(seed: int, step: int) -> np.random.Generator:
    """Host-side stream of step `step` (batch sampling): the same whatever ran before."""
    return np.random.default_rng(np.random.SeedSequence([seed, step]))


def step_key(key: jax.Array, step) -> jax.Array:
    """Device-side key of step `step` (sampling, dropout); `step` may be traced."""
    return jax.random.fold_in(key, step)
