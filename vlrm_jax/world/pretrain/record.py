"""Where a pre-training run puts things, what a stage hands back, and the stage cache.

A stage is skipped when its folder holds a `pretrain.json` with the same stage hash: the stage's
config, the world's config, the hashes of the stages it builds on and PRETRAIN_VERSION (code is
not hashed, so a change to what a stage trains must bump the version).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from vlrm_jax.checkpoint.model_dir import write_model_dir
from vlrm_jax.models import build
from vlrm_jax.world import shapes

# Bump when a change to a stage's code changes what it trains, so cached folders are redone.
PRETRAIN_VERSION = 1
STAGES = ("reference_lm", "itm", "captioner", "clip")
DEPENDS_ON = {"captioner": ("reference_lm", "itm")}
STAGE_FILE = "pretrain.json"  # next to config.json: how and from what the folder was trained
LOG_EVERY = 25


@dataclasses.dataclass(frozen=True)
class Workdir:
    root: Path

    @property
    def world(self) -> Path:
        return self.root / "world"

    @property
    def tokenizers(self) -> Path:
        return self.root / "tokenizers"

    def model(self, stage: str) -> Path:
        return self.root / "models" / stage

    def tensorboard(self, stage: str) -> Path:
        return self.root / "tb" / stage

    def loss_plot(self, stage: str) -> Path:
        return self.root / "plots" / f"{stage}_loss.png"


@dataclasses.dataclass(frozen=True)
class StageContext:
    workdir: Workdir
    cfg: Any  # the whole ml_collections config (configs/shapes.py)
    world: shapes.World
    tokenizer_dirs: dict[str, Path]  # "captioner", "itm" (from world.tokenizers.build_tokenizers)


@dataclasses.dataclass(frozen=True)
class StageResult:
    stage: str
    folder: Path
    skipped: bool  # loaded from the cache
    seconds: float  # training time (of the run that made the folder, when skipped)
    final_loss: float  # mean of the last LOG_EVERY steps
    metrics: dict


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stage_hash(cfg, stage: str) -> str:
    """Everything a stage's weights depend on, upstream stages included."""
    upstream = {name: stage_hash(cfg, name) for name in DEPENDS_ON.get(stage, ())}
    return _digest({"stage": stage, "version": PRETRAIN_VERSION, "world": cfg.world.to_dict(),
                    "config": cfg[stage].to_dict(), "upstream": upstream})


def cached_result(ctx: StageContext, stage: str) -> StageResult | None:
    """The stage's folder, when it holds this very stage (same hash); None otherwise."""
    record_path = ctx.workdir.model(stage) / STAGE_FILE
    if not record_path.is_file():
        return None
    record = json.loads(record_path.read_text())
    if record.get("hash") != stage_hash(ctx.cfg, stage):
        return None
    return StageResult(stage, ctx.workdir.model(stage), True, record["seconds"], record["final_loss"], record["metrics"])


def save_stage(ctx: StageContext, stage: str, kind: str, model_config: dict, module: nnx.Module,
                losses: np.ndarray, seconds: float, metrics: dict, side_files: list[Path]) -> StageResult:
    folder = ctx.workdir.model(stage)
    final_loss = float(np.mean(losses[-LOG_EVERY:]))
    record = {"stage": stage, "hash": stage_hash(ctx.cfg, stage), "config": ctx.cfg[stage].to_dict(),
              "world": ctx.cfg.world.to_dict(), "version": PRETRAIN_VERSION, "seconds": seconds,
              "final_loss": final_loss, "steps": len(losses), "metrics": metrics}
    params = {p: np.asarray(v) for p, v in build.flat_params(module).items()}
    with tempfile.TemporaryDirectory() as side:
        record_path = Path(side) / STAGE_FILE
        record_path.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        # A different config (or a half-written folder from an interrupted run) is replaced whole.
        write_model_dir(str(folder), kind, model_config, params,
                        extra_files=[str(p) for p in side_files] + [str(record_path)], overwrite=True)
    return StageResult(stage, folder, False, seconds, final_loss, metrics)
