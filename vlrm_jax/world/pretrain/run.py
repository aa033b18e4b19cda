"""Every stage by name, each run unless its folder already holds it."""
from __future__ import annotations

from vlrm_jax.world.pretrain.captioner import train_captioner
from vlrm_jax.world.pretrain.clip import train_clip
from vlrm_jax.world.pretrain.itm import train_itm
from vlrm_jax.world.pretrain.record import STAGES, StageContext, StageResult, cached_result
from vlrm_jax.world.pretrain.reference_lm import train_reference_lm

TRAINERS = {"reference_lm": train_reference_lm, "itm": train_itm, "captioner": train_captioner,
            "clip": train_clip}


def run_stage(ctx: StageContext, stage: str) -> StageResult:
    """Train `stage` unless its folder already holds the same stage (same hash)."""
    cached = cached_result(ctx, stage)
    if cached is not None:
        print(f"[{stage}] cached in {cached.folder} (trained in {cached.seconds:.0f} s)")
        return cached
    return TRAINERS[stage](ctx)


def run_all(ctx: StageContext, stages: tuple[str, ...] = STAGES) -> dict[str, StageResult]:
    return {stage: run_stage(ctx, stage) for stage in stages}
