"""Stage 3, the captioner: BLIP2 with the ITM's ViT (frozen, so the RL run can share the trunk)
and an OPT started from the reference LM; query tokens, Q-Former, projection and OPT learn the
short captions while OPT keeps the reference LM's loss on every caption style."""
from __future__ import annotations

import numpy as np
from flax import nnx

from vlrm_jax.checkpoint import kinds
from vlrm_jax.models.blip2 import POLICY_TRAINABLE, Blip2Captioner, Blip2Config, parts_filter
from vlrm_jax.models.itm import ItmConfig
from vlrm_jax.models.opt import OPTConfig
from vlrm_jax.models.qformer import QFormerConfig
from vlrm_jax.ops import next_token_loss
from vlrm_jax.world.pretrain.supervised import step_rng
from vlrm_jax.world import shapes
from vlrm_jax.world.pretrain.inputs import blip2_pixels, load_tokenizer, opt_ids, tokenizer_files, vision_states
from vlrm_jax.world.pretrain.loop import fan_in_init, train_phase
from vlrm_jax.world.pretrain.record import StageContext, StageResult, save_stage
from vlrm_jax.world.pretrain.reference_lm import lm_corpus


def captioner_config(cfg, itm_cfg: ItmConfig, lm_cfg: OPTConfig) -> Blip2Config:
    scfg = cfg.captioner
    qformer = QFormerConfig(**{**scfg.qformer.to_dict(), "encoder_hidden_size": itm_cfg.vision.hidden_size})
    return Blip2Config(vision=itm_cfg.vision, qformer=qformer, text=lm_cfg,
                       num_query_tokens=scfg.num_query_tokens, image_token_index=None)


def short_caption(scene: shapes.Scene, style: str) -> str:
    """The base captioner's target: "terse" is the world's "a red circle"; "sized" adds the size,
    "a large red circle", the same one object in the 4 tokens the paper's min_new_tokens=4 asks
    for (with 3-token targets the beam pads to 4 words: "a brown orange circle")."""
    if style == "terse":
        return shapes.terse_caption(scene)
    if style == "sized":
        return shapes.object_phrase(shapes.most_salient(scene), True, False)
    raise ValueError(f"unknown caption style {style!r}; expected 'terse' or 'sized'")


def captioner_scenes(ctx: StageContext) -> shapes.Split:
    """The training split, then `captioner.extra_scenes` more from the captioner's own stream
    (as BLIP2's captioner saw far more images than the RL data): on the 6000 training scenes alone
    it fit its 1800 full captions and read the colour of a listed object right only 75 % of the
    time on held-out scenes (teacher-forced, 83 % on training scenes)."""
    n = ctx.cfg.captioner.get("extra_scenes", 0)
    if n < 0:
        raise ValueError(f"captioner.extra_scenes must be >= 0, got {n}")
    if not n:
        return ctx.world.train
    w = ctx.cfg.world
    return shapes.extend_split(ctx.world.train, shapes.generate_split(w.seed, shapes.CAPTIONER_SPLIT, n, w.image_size, w.supersample))


def caption_targets(scenes: shapes.Split, style: str, full_fraction: float, seed: int) -> list[str]:
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    return [shapes.full_caption(s) if rng.random() < full_fraction else short_caption(s, style)
            for s in scenes.scenes]


def train_captioner(ctx: StageContext) -> StageResult:
    from vlrm_jax.api import ItmScorer, ReferenceLM

    scfg = ctx.cfg.captioner
    itm = ItmScorer.load(str(ctx.workdir.model("itm"))).module
    lm = ReferenceLM.load(str(ctx.workdir.model("reference_lm"))).module
    model_cfg = captioner_config(ctx.cfg, itm.cfg, lm.cfg)
    model = Blip2Captioner(model_cfg, rngs=nnx.Rngs(scfg.seed))
    fan_in_init(model, scfg.seed, skip=("vision_model", "language_model"))
    # BLIP2's recipe: a frozen image encoder and a frozen LLM, bridged by a trained Q-Former.
    nnx.update(model.vision_model, nnx.state(itm.vision_model))
    nnx.update(model.language_model, nnx.state(lm))
    tokenizer = load_tokenizer(ctx.tokenizer_dirs["captioner"])
    scenes = captioner_scenes(ctx)
    ids, mask = opt_ids(tokenizer, caption_targets(scenes, scfg.caption_style, scfg.full_caption_fraction, scfg.seed))
    # the reference LM's own corpus (training split): also on the extra scenes' captions it read
    # a little worse (configs/shapes_world_log.md, 2026-12-04 (5))
    lm_ids, lm_mask = opt_ids(tokenizer, lm_corpus(ctx.world, ctx.cfg.reference_lm.seed))
    states = vision_states(model.vision_model, blip2_pixels(scenes.images, model_cfg.vision.image_size))

    def batch_at(step):
        rng = step_rng(scfg.seed, step)
        rows, lm_rows = rng.integers(len(ids), size=scfg.batch_size), rng.integers(len(lm_ids), size=scfg.lm_batch_size)
        return {"states": states[rows], "ids": ids[rows], "mask": mask[rows],
                "lm_ids": lm_ids[lm_rows], "lm_mask": lm_mask[lm_rows]}

    def loss_fn(model, batch):
        logits = model.text_logits(batch["states"], batch["ids"], batch["mask"])
        loss = next_token_loss(logits, batch["ids"], batch["mask"])
        if scfg.train_language_model:  # keep every caption style while the image prompt asks for terse ones
            lm_logits = model.language_model(batch["lm_ids"], batch["lm_mask"])
            loss += scfg.lm_loss_weight * next_token_loss(lm_logits, batch["lm_ids"], batch["lm_mask"])
        return loss

    parts = POLICY_TRAINABLE + (("language_model",) if scfg.train_language_model else ())
    trainable = parts_filter(parts)
    losses, seconds = train_phase(ctx, "captioner", model, loss_fn, batch_at, scfg, trainable)
    return save_stage(ctx, "captioner", kinds.BLIP2_OPT, model_cfg.to_dict(), model, losses, seconds,
                       {"trainable": list(parts)}, tokenizer_files(ctx.tokenizer_dirs["captioner"]))
