"""Before any timing, bench/train_step.py checks that both sides compute the same step: the
PyTorch composite scores the JAX step's first rollout and takes its losses on it."""
from __future__ import annotations

import numpy as np
import torch

from bench.jax_side import JaxSide
from bench.torch_side import TorchSide


def check_same_step(jax_side: JaxSide, torch_side: TorchSide, pixels: np.ndarray) -> dict:
    """The composite scores the JAX step's first rollout and takes its losses on it, before
    either side has updated: returns and losses must be the JAX step's."""
    metrics, samples = jax_side.step(jax_side.batch(pixels))
    px = torch_side.batch(pixels)
    tokens = torch.tensor(np.asarray(samples["tokens"]), dtype=torch.long, device=torch_side.device)
    with torch.no_grad():
        vision = torch_side.hf.vision_model(px).last_hidden_state
        soft = torch_side._soft_prompt(vision)
    returns, mask, parts = torch_side.reward(px, tokens)
    torch_side.zero_grad()
    lp, lv = torch_side.losses(vision, soft, tokens, mask, returns)
    torch_side.zero_grad()
    torch_side.times.clear()
    reward_jax, reward_torch = np.asarray(samples["reward"], np.float64), returns[:, 0].double().cpu().numpy()
    # the policy loss is a mean of centred advantages times token probabilities, which cancel to
    # near 0 (2e-4 to 6e-4 measured) while each term is up to an advantage in size: its difference
    # is taken relative to the advantages' scale, sqrt(value loss), when that is larger
    rel = lambda a, b, floor=1e-2: abs(a - b) / max(abs(b), floor)  # noqa: E731
    advantage_scale = float(np.sqrt(max(lv, 0.0)))
    out = dict(
        reward_max_abs_diff=float(np.max(np.abs(reward_jax - reward_torch))),
        reward_scale=float(np.max(np.abs(reward_torch))),
        loss_policy_jax=float(metrics["loss/policy"]), loss_policy_torch=lp,
        loss_value_jax=float(metrics["loss/value"]), loss_value_torch=lv,
        loss_policy_rel_diff=rel(float(metrics["loss/policy"]), lp, max(1e-2, advantage_scale)),
        loss_value_rel_diff=rel(float(metrics["loss/value"]), lv), advantage_scale=advantage_scale,
        caption_length=float(mask.sum(1).mean()),
    )
    tol = torch_side.s.shape["check_tolerance"]
    out["tolerance"] = tol
    out["ok"] = bool(out["reward_max_abs_diff"] <= tol * max(out["reward_scale"], 1.0)
                     and out["loss_policy_rel_diff"] <= tol and out["loss_value_rel_diff"] <= tol)
    return out

