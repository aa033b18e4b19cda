"""Which frozen parts can be computed once per training step.

The captioner's ViT-g trunk and BLIP2-ITM's are the same EVA ViT-g in the released checkpoints
(each has its own final LayerNorm), and the reference LM is the captioner's own OPT. When the
converted weights are equal, the train step runs the trunk once and reuses it for the rollout, the
ITM reward and the policy update, and scores `ref` with the captioner's LLM. Decided by comparing
every tensor at load time, never assumed.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from flax import nnx

from vlrm_jax.models import build

TRUNK_EXCLUDED = ("post_layernorm",)  # each model keeps its own final LayerNorm


@dataclasses.dataclass(frozen=True)
class SharingReport:
    shared: bool
    reason: str  # the first difference found, or "all N tensors equal"


def _flat(module: nnx.Module) -> dict[tuple, np.ndarray]:
    return {p: np.asarray(v) for p, v in build.flat_params(module).items()}


def compare_params(a: nnx.Module, b: nnx.Module, exclude: tuple[str, ...] = ()) -> SharingReport:
    """Equal structure, shapes and values, ignoring paths that contain an `exclude` name.
    Values are compared exactly after casting to a common dtype: a bf16 and an fp32 copy of
    the same checkpoint are not shared (their outputs differ)."""
    fa, fb = _flat(a), _flat(b)
    keep = lambda p: not any(x in p for x in exclude)  # noqa: E731
    ka, kb = {p for p in fa if keep(p)}, {p for p in fb if keep(p)}
    if ka != kb:
        diff = sorted(map(str, ka ^ kb))[0]
        return SharingReport(False, f"different parameters, e.g. {diff}")
    for p in sorted(ka, key=str):
        x, y = fa[p], fb[p]
        if x.shape != y.shape or x.dtype != y.dtype:
            return SharingReport(False, f"{'.'.join(map(str, p))}: {x.shape} {x.dtype} vs {y.shape} {y.dtype}")
        if not np.array_equal(x, y):
            return SharingReport(False, f"{'.'.join(map(str, p))} differs")
    return SharingReport(True, f"all {len(ka)} tensors equal")


def vision_trunk_shared(captioner, itm) -> SharingReport:
    """Captioner (Blip2Captioner) vs BLIP2-ITM (Blip2Itm): same ViT apart from the final LayerNorm?"""
    return compare_params(captioner.vision_model, itm.vision_model, exclude=TRUNK_EXCLUDED)


def reference_lm_shared(captioner, reference_lm) -> SharingReport:
    """Captioner's OPT vs the reference LM (OPTForCausalLM): identical weights?"""
    return compare_params(captioner.language_model, reference_lm)
