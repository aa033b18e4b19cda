"""Stage 4, CLIP (the evaluator): its own image tower pre-trained like the ITM's from its own
seed (phase clip_vision), then symmetric InfoNCE on the full captions; it shares nothing with
the reward models."""
from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from vlrm_jax.checkpoint import kinds
from vlrm_jax.checkpoint.open_clip_files import preprocess_config, write_side_files
from vlrm_jax.ops import l2_normalize
from vlrm_jax.world.pretrain.supervised import step_rng
from vlrm_jax.world import shapes
from vlrm_jax.world.pretrain.encoder import clip_vision_tokens, pretrain_encoder, vision_metrics
from vlrm_jax.world.pretrain.inputs import clip_pixels
from vlrm_jax.world.pretrain.loop import fan_in_init, train_phase
from vlrm_jax.world.pretrain.record import LOG_EVERY, StageContext, StageResult, save_stage


def open_clip_model_config(cfg) -> dict:
    """The CLIP block of the config is open_clip's own model config (embed_dim, vision_cfg,
    text_cfg), so the folder's open_clip_config.json rebuilds the same tokenizer in open_clip."""
    return cfg.clip.model.to_dict()


def clip_text_ids(tokenizer, texts: list[str]) -> np.ndarray:
    """(N, L) ids cut after the longest text's EOT: under the causal mask the embedding is the
    same as with the full zero-padded context, and shorter rows train faster."""
    ids = np.asarray(tokenizer(texts), np.int32)
    used = int(np.max(np.nonzero(ids.any(axis=0))[0])) + 1
    return ids[:, :used]


def infonce_loss(image_emb, text_emb, log_scale):
    """Symmetric InfoNCE over the batch; the scale is learned, capped at 100 as open_clip does."""
    logits = jnp.exp(jnp.minimum(log_scale, jnp.log(100.0))) * l2_normalize(image_emb) @ l2_normalize(text_emb).T
    labels = jnp.arange(logits.shape[0])
    ce = lambda z: optax.softmax_cross_entropy_with_integer_labels(z, labels).mean()  # noqa: E731
    return 0.5 * (ce(logits) + ce(logits.T))


def train_clip(ctx: StageContext) -> StageResult:
    from vlrm_jax.models.clip import ClipConfig, ClipModel
    from vlrm_jax.world.tokenizers import clip_tokenizer

    scfg = ctx.cfg.clip
    oc_cfg = open_clip_model_config(ctx.cfg)
    model_cfg = ClipConfig.from_open_clip(oc_cfg)
    preprocess = preprocess_config(model_cfg, {})
    pixels = clip_pixels(ctx.world.train.images, model_cfg.vision.image_size[0])
    tokenizer = clip_tokenizer(model_cfg.text.context_length).tokenizer
    n_templates = len(shapes.FULL_TEMPLATES)
    # (scenes, templates, context): every paraphrase of the full caption, one drawn per step.
    texts = [shapes.full_caption(s, t) for s in ctx.world.train.scenes for t in range(n_templates)]
    ids = clip_text_ids(tokenizer, texts).reshape(len(ctx.world.train), n_templates, -1)
    model = ClipModel(model_cfg, rngs=nnx.Rngs(scfg.seed))
    fan_in_init(model, scfg.seed, skip=("visual",))
    model.logit_scale[...] = jnp.log(1 / 0.07)  # open_clip's initial temperature
    # Its own image tower, pre-trained like the ITM's but from its own seed: the evaluator shares
    # no weights with the reward model.
    vision_losses, vision_seconds, parsing = pretrain_encoder(
        ctx, "clip_vision", model.visual, clip_vision_tokens,
        functools.partial(clip_pixels, size=model_cfg.vision.image_size[0]), model_cfg.vision.patch_size[0],
        scfg.vision_pretrain, scfg.seed + 100)

    def batch_at(step):
        rng = step_rng(scfg.seed, step)
        rows = rng.choice(len(ids), size=scfg.batch_size, replace=False)  # distinct scenes: no false negatives
        return {"pixels": pixels[rows], "ids": ids[rows, rng.integers(n_templates, size=len(rows))]}

    def loss_fn(model, batch):
        return infonce_loss(model.encode_image(batch["pixels"]), model.encode_text(batch["ids"]),
                            model.logit_scale[...])

    losses, seconds = train_phase(ctx, "clip", model, loss_fn, batch_at, scfg)
    metrics = {"logit_scale": float(jnp.exp(model.logit_scale[...])), **vision_metrics(parsing),
               "vision_seconds": vision_seconds, "vision_final_loss": float(np.mean(vision_losses[-LOG_EVERY:]))}
    seconds += vision_seconds
    with tempfile.TemporaryDirectory() as side:
        files = write_side_files(side, oc_cfg, preprocess, "shapes-clip", "vlrm_jax.world.pretrain")
        return save_stage(ctx, "clip", kinds.OPEN_CLIP, model_cfg.to_dict(), model, losses, seconds, metrics,
                           [Path(f) for f in files])
