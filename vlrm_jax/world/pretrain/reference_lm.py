"""Stage 1, the reference LM: OPT learns every way the world speaks of a scene."""
from __future__ import annotations

import dataclasses

import numpy as np
from flax import nnx

from vlrm_jax.checkpoint import kinds
from vlrm_jax.models.opt import OPTConfig, OPTForCausalLM
from vlrm_jax.ops import next_token_loss
from vlrm_jax.world.pretrain.supervised import step_rng
from vlrm_jax.world import shapes
from vlrm_jax.world.language import partial_description, render_description
from vlrm_jax.world.pretrain.inputs import load_tokenizer, opt_ids, tokenizer_files
from vlrm_jax.world.pretrain.loop import train_phase
from vlrm_jax.world.pretrain.record import StageContext, StageResult, save_stage


def scene_descriptions(scene: shapes.Scene, rng: np.random.Generator) -> list[str]:
    """Every way the world speaks of a scene: the full caption in each template, the terse one and
    one true partial description."""
    return ([shapes.full_caption(scene, t) for t in range(len(shapes.FULL_TEMPLATES))]
            + [shapes.terse_caption(scene), render_description(partial_description(scene, rng))])


def lm_corpus(world: shapes.World, seed: int) -> list[str]:
    """Every description of every training scene (see scene_descriptions)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    return [text for scene in world.train.scenes for text in scene_descriptions(scene, rng)]


def lm_config(cfg, vocab_size: int) -> OPTConfig:
    return OPTConfig(vocab_size=vocab_size, **cfg.reference_lm.model.to_dict())


def train_reference_lm(ctx: StageContext) -> StageResult:
    scfg = ctx.cfg.reference_lm
    tokenizer = load_tokenizer(ctx.tokenizer_dirs["captioner"])
    ids, mask = opt_ids(tokenizer, lm_corpus(ctx.world, scfg.seed))
    model_cfg = lm_config(ctx.cfg, len(tokenizer))
    model = OPTForCausalLM(model_cfg, rngs=nnx.Rngs(scfg.seed))

    def batch_at(step):
        rows = step_rng(scfg.seed, step).integers(len(ids), size=scfg.batch_size)
        return {"ids": ids[rows], "mask": mask[rows]}

    def loss_fn(model, batch):
        return next_token_loss(model(batch["ids"], batch["mask"]), batch["ids"], batch["mask"])

    losses, seconds = train_phase(ctx, "reference_lm", model, loss_fn, batch_at, scfg)
    return save_stage(ctx, "reference_lm", kinds.OPT, dataclasses.asdict(model_cfg), model, losses, seconds,
                       {"corpus_texts": len(ids)}, tokenizer_files(ctx.tokenizer_dirs["captioner"]))
