"""The JAX side of bench/train_step.py: `vlrm_jax.rl.step.A2CStep.step` exactly as training calls
it (VlrmScorer reward inside the jitted program, ViT trunk shared with the ITM, the captioner's
OPT as reference LM), and each stage timed on its own through the step's public passes."""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from bench.step_shapes import Setup, jax_clip, jax_models


class JaxSide:
    """The project's step on the setup's models, converted."""

    def __init__(self, setup: Setup):
        from flax import nnx

        from vlrm_jax.models import build
        from vlrm_jax.models.value import ValueNetwork
        from vlrm_jax.rl.scoring import VlrmScorer
        from vlrm_jax.rl.step import A2CStep

        cap, itm = jax_models(setup.hf_cap, setup.hf_itm, setup.shape["dtype"])
        value = build.from_params(lambda: ValueNetwork(setup.value_cfg, cap.cfg.text, rngs=nnx.Rngs(1)),
                                  {p: jnp.asarray(v) for p, v in setup.flat_value.items()})
        clip = jax_clip(setup.clip, setup.shape) if setup.clip is not None else None
        scorer = VlrmScorer(setup.reward_cfg, setup.retokenizer(), bos_token_id=cap.cfg.text.bos_token_id)
        ref_lm = cap.language_model if setup.variant == "vlrm" else None
        self.trainer = A2CStep(setup.a2c, cap, value, scorer, setup.rollout, itm=itm, ref_lm=ref_lm, clip=clip)
        self.state = self.trainer.init_state(0)
        self.rollout_cfg = setup.rollout

    def batch(self, pixels: np.ndarray) -> dict:
        batch = {"pixels": pixels}
        if self.trainer.frozen.clip is not None:
            batch["clip_pixels"] = pixels
        return self.trainer.shard_batch(batch)

    def step(self, batch):
        self.state, metrics, samples = self.trainer.step(self.state, self.trainer.frozen, batch)
        jax.block_until_ready((self.state, metrics))
        return metrics, samples

    def stage_times(self, batch, reps: int) -> dict:
        """Seconds of each stage on its own (each jitted apart, so the sum exceeds a whole step
        by what fusing them saves): rollout (ViT + generate), reward (experience minus rollout),
        value pass, policy pass, optimizer (update minus both passes)."""
        from flax import nnx

        from vlrm_jax.generate.search import generate_jit
        from vlrm_jax.rl import losses

        t, frozen, state = self.trainer, self.trainer.frozen, self.state
        graph, cap_state = nnx.split(t.policy_module(state))
        key = jax.random.key(0)
        exp, _, _ = t.experience(state, frozen, batch)
        value_pass = jax.jit(t.value_pass)
        _, _, values = value_pass(state, frozen, exp)
        stats = losses.advantage_stats(exp.returns - values, exp.mask)
        normalised = losses.normalise(exp.returns - values, stats, t.cfg.advantage_eps) * exp.mask
        policy_pass = jax.jit(t.policy_pass)
        update = jax.jit(t.update_step)  # not donating: the same state is timed again
        calls = {
            "rollout": lambda: generate_jit(graph, self.rollout_cfg, cap_state, batch["pixels"], key),
            "experience": lambda: t.experience(state, frozen, batch),
            "value_pass": lambda: value_pass(state, frozen, exp),
            "policy_pass": lambda: policy_pass(state, frozen, exp, normalised),
            "update": lambda: update(state, frozen, exp),
        }
        out = {name: median_time(fn, reps) for name, fn in calls.items()}
        return {"rollout": out["rollout"], "reward": out["experience"] - out["rollout"],
                "value_pass": out["value_pass"], "policy_pass": out["policy_pass"],
                "optimizer": out["update"] - out["value_pass"] - out["policy_pass"]}


def median_time(fn, reps: int) -> float:
    """Median seconds of `reps` calls of fn after one warm-up (compile) call."""
    jax.block_until_ready(fn())  # compile / warm
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return float(np.median(times))

