"""Stage 2, BLIP2-ITM: its ViT first learns to read out the scene (phase itm_vision), then is
frozen while the Q-Former learns graded match targets, a ranking term and BLIP2's ITC loss."""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from vlrm_jax.checkpoint import kinds
from vlrm_jax.models.itm import Blip2Itm, ItmConfig
from vlrm_jax.models.qformer import QFormerConfig
from vlrm_jax.models.vit import VisionConfig
from vlrm_jax.world.pretrain.supervised import step_rng
from vlrm_jax.world import shapes
from vlrm_jax.world.language import (Description, add_confusable, complete_description, corrupt, empty_cells,
                                     match_target, misplace, mispair, partial_description, render_description, terse_description)
from vlrm_jax.world.pretrain.encoder import pretrain_encoder, vision_metrics, vit_tokens
from vlrm_jax.world.pretrain.inputs import (WordPieceIds, blip2_pixels, chunked, load_tokenizer, tokenizer_files,
                                           vision_states)
from vlrm_jax.world.pretrain.loop import fan_in_init, train_phase
from vlrm_jax.world.pretrain.record import LOG_EVERY, StageContext, StageResult, save_stage

TEXTS_PER_IMAGE = 4  # two (correct, wrong) pairs, see itm_texts


def itm_texts(scene: shapes.Scene, other: shapes.Scene, rng: np.random.Generator,
              floor: float, mispaired: float = 0.0, misplaced: float = 0.0) -> list[tuple[str, float]]:
    """Two (correct, wrong) pairs of (text, match target) for one image:
    the full caption (1) and the same caption with one detail made wrong (0); a true partial or
    terse description (graded, see match_target) and the same with one detail made wrong, or now
    and then another scene's full caption (0). Pairs that differ in one detail are what teaches
    the ITM to check every detail (the ranking term of itm_loss compares them). A share
    `mispaired` of the wrong details pairs a colour and a shape of the scene that belong to
    different objects (language.mispair), where the scene allows it; a share `misplaced`, drawn
    first, puts one object whose position the text states in a wrong cell (language.misplace)."""
    n_templates = len(shapes.FULL_TEMPLATES)
    full = complete_description(scene, int(rng.integers(n_templates)))
    partial = terse_description(scene) if rng.random() < 0.2 else partial_description(scene, rng)

    def wrong(d):
        # no draw at 0, so the texts (and cached ITMs) of configs without the option stay as they were
        out = misplace(d, scene, rng) if misplaced and rng.random() < misplaced else None
        if out is None and mispaired and rng.random() < mispaired:
            out = mispair(d, scene, rng)
        return render_description(out if out is not None else corrupt(d, scene, rng))

    if rng.random() < 0.2:
        partial_wrong = shapes.full_caption(other, int(rng.integers(n_templates)))
    else:
        partial_wrong = wrong(partial)
    return [(render_description(full), 1.0), (wrong(full), 0.0),
            (render_description(partial), match_target(partial, scene, floor)), (partial_wrong, 0.0)]


def itm_config(cfg, vocab_size: int, pad_token_id: int) -> ItmConfig:
    scfg = cfg.itm
    qformer = QFormerConfig(vocab_size=vocab_size, pad_token_id=pad_token_id, **scfg.qformer.to_dict())
    return ItmConfig(vision=VisionConfig(**scfg.vision.to_dict()), qformer=qformer,
                     num_query_tokens=scfg.num_query_tokens, image_text_hidden_size=scfg.image_text_hidden_size)


def itm_loss(logits, target, centering: float, ranking: float):
    """Cross-entropy against the soft match target; a logistic ranking term that puts each correct
    text above its one-detail-wrong twin (rows come in itm_texts' order); and a pull of
    logit_0 + logit_1 towards 0 so the match logit alone (the reward) carries the score."""
    logp = jax.nn.log_softmax(logits)
    ce = -(target * logp[:, 1] + (1.0 - target) * logp[:, 0])
    score = (logits[:, 1] - logits[:, 0]).reshape(-1, 2)  # (correct, wrong) pairs
    rank = jax.nn.softplus(score[:, 1] - score[:, 0])
    return ce.mean() + ranking * rank.mean() + centering * jnp.mean(logits.sum(axis=-1) ** 2)


def itc_loss(model: Blip2Itm, states, ids, mask, temperature: float):
    """BLIP2's image-text contrastive term over the batch (max over query outputs): it gives the
    text side a grounded meaning fast, which the matching head then builds on."""
    sims = model.itc_similarity(states, ids, mask) / temperature
    labels = jnp.arange(sims.shape[0])
    ce = lambda z: optax.softmax_cross_entropy_with_integer_labels(z, labels).mean()  # noqa: E731
    return 0.5 * (ce(sims) + ce(sims.T))


def train_itm(ctx: StageContext) -> StageResult:
    scfg = ctx.cfg.itm
    tokenizer = load_tokenizer(ctx.tokenizer_dirs["itm"])
    encode = WordPieceIds(tokenizer, scfg.max_length)
    train = ctx.world.train
    model_cfg = itm_config(ctx.cfg, len(tokenizer), tokenizer.pad_token_id)
    pixels = blip2_pixels(train.images, model_cfg.vision.image_size)
    check_rng = np.random.default_rng(np.random.SeedSequence([scfg.seed, 2, 0]))
    encode.check([t for i in range(min(50, len(train))) for t, _ in _itm_batch_texts(train, i, scfg, check_rng)])
    model = Blip2Itm(model_cfg, rngs=nnx.Rngs(scfg.seed))
    fan_in_init(model, scfg.seed, skip=("vision_model",))
    # The image encoder is pre-trained, then frozen as BLIP2 freezes EVA ViT-g; the captioner
    # reuses it whole, so the RL run can share the trunk.
    vision_losses, vision_seconds, parsing = pretrain_encoder(
        ctx, "itm_vision", model.vision_model, vit_tokens,
        functools.partial(blip2_pixels, size=model_cfg.vision.image_size), model_cfg.vision.patch_size,
        scfg.vision_pretrain, scfg.seed + 100)
    states = vision_states(model.vision_model, pixels)

    def batch_at(step):
        rng = step_rng(scfg.seed, step)
        images = rng.integers(len(train), size=scfg.batch_size)
        pairs = [p for i in images for p in _itm_batch_texts(train, int(i), scfg, rng)]
        ids, mask = encode([t for t, _ in pairs])
        return {"states": states[images], "ids": ids, "mask": mask,
                "target": np.asarray([y for _, y in pairs], np.float32)}

    def loss_fn(model, batch):
        states, ids, mask = batch["states"], batch["ids"], batch["mask"]
        logits = model.itm_logits(jnp.repeat(states, TEXTS_PER_IMAGE, axis=0), ids, mask)
        loss = itm_loss(logits, batch["target"], scfg.logit_centering, scfg.ranking)
        if scfg.itc_weight:  # row 0 of each image's texts is its full caption
            full = slice(0, None, TEXTS_PER_IMAGE)
            loss += scfg.itc_weight * itc_loss(model, states, ids[full], mask[full], scfg.itc_temperature)
        return loss

    trainable = nnx.All(nnx.Param, lambda path, _: path[0] != "vision_model")
    losses, seconds = train_phase(ctx, "itm", model, loss_fn, batch_at, scfg, trainable)
    metrics = {**vision_metrics(parsing), "vision_seconds": vision_seconds,
               "vision_final_loss": float(np.mean(vision_losses[-LOG_EVERY:])),
               **itm_preferences(model, ctx.world.test, encode, scfg)}
    return save_stage(ctx, "itm", kinds.BLIP2_ITM, model_cfg.to_dict(), model, losses, seconds + vision_seconds,
                       metrics, tokenizer_files(ctx.tokenizer_dirs["itm"]))


def _itm_batch_texts(split: shapes.Split, index: int, scfg, rng) -> list[tuple[str, float]]:
    other = (index + 1 + int(rng.integers(len(split) - 1))) % len(split) if len(split) > 1 else index
    return itm_texts(split.scenes[index], split.scenes[other], rng, scfg.partial_floor, scfg.get("mispaired", 0.0),
                     scfg.get("misplaced", 0.0))


def itm_preferences(model: Blip2Itm, split: shapes.Split, encode: WordPieceIds, scfg) -> dict:
    """What the reward will see, on held-out scenes: mean match logit of the full, terse and
    one-wrong-detail captions, and how often full beats terse and correct beats wrong."""
    rng = np.random.default_rng(np.random.SeedSequence([scfg.seed, 10 ** 6]))
    kinds = {
        "full": [shapes.full_caption(s) for s in split.scenes],
        "terse": [shapes.terse_caption(s) for s in split.scenes],
        "full_wrong": [render_description(corrupt(complete_description(s), s, rng)) for s in split.scenes],
        "terse_wrong": [render_description(corrupt(terse_description(s), s, rng)) for s in split.scenes],
    }
    pixels = blip2_pixels(split.images, model.cfg.vision.image_size)
    match = match_logit_fn(model)
    logits = {k: match(pixels, *encode(texts)) for k, texts in kinds.items()}
    out = {f"match_logit_{k}": float(v.mean()) for k, v in logits.items()}
    out["full_beats_terse"] = float(np.mean(logits["full"] > logits["terse"]))
    out["full_beats_full_wrong"] = float(np.mean(logits["full"] > logits["full_wrong"]))
    out["terse_beats_terse_wrong"] = float(np.mean(logits["terse"] > logits["terse_wrong"]))
    out.update(pairing_preferences(match, split, pixels, encode, rng))
    # the full caption against itself with one object in a wrong cell (every other word right)
    place_rng = np.random.default_rng(np.random.SeedSequence([scfg.seed, 10 ** 6 + 2]))
    misplaced = [render_description(misplace(complete_description(s), s, place_rng)) for s in split.scenes]
    out["full_beats_misplaced"] = float(np.mean(logits["full"] > match(pixels, *encode(misplaced))))
    out["confusable_extra_wins"] = confusable_extra_wins(match, split, pixels, encode, scfg.seed)
    return out


def confusable_extra_wins(match: Callable, split: shapes.Split, pixels, encode: WordPieceIds, seed: int) -> float:
    """How often a true description of some of the scene's objects (each with size and position,
    as the RL policy writes them) scores below the same with one object added from the scene's
    own words that the scene does not hold (language.add_confusable): the reward for inventing.
    The RL policy's invented objects were of this kind: mispaired, or a stated object again."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 10 ** 6 + 1]))
    rows, alone, extra = [], [], []
    for k, scene in enumerate(split.scenes):
        d = partial_description(scene, rng)
        d = dataclasses.replace(d, with_size=(True,) * len(d.objects), with_position=(True,) * len(d.objects))
        more = add_confusable(d, scene, rng)
        if more is not None:
            rows.append(k)
            alone.append(render_description(d))
            extra.append(render_description(more))
    return beats(match, pixels, encode, rows, extra, alone)


def pairing_preferences(match: Callable, split: shapes.Split, pixels, encode: WordPieceIds, rng) -> dict:
    """Whether the ITM ties colours to shapes, on held-out scenes of two or more objects:
    `pairing`, how often a true object phrase ("a red circle") beats the same phrase mispaired
    from the scene's own words ("a blue circle" beside a blue star; chance 0.5), and
    `mispaired_extra_wins`, how often the salient object's phrase with one such mispaired object
    added (at an empty cell) beats the phrase alone: the gain an RL policy finds by inventing."""
    rows, true, wrong, rows_extra, alone, extra = [], [], [], [], [], []
    for k, scene in enumerate(split.scenes):
        if len(scene.objects) < 2:
            continue
        obj = scene.objects[int(rng.integers(len(scene.objects)))]
        d = Description((obj,), (False,), (False,), None)
        bad = mispair(d, scene, rng)
        if bad is not None:
            rows.append(k)
            true.append(render_description(d))
            wrong.append(render_description(bad))
        salient = shapes.most_salient(scene)
        phrase = Description((salient,), (True,), (True,), None)
        twin = mispair(phrase, scene, rng)
        free = empty_cells(scene)
        if twin is not None and free:
            added = dataclasses.replace(twin.objects[0], cell=int(rng.choice(free)))
            rows_extra.append(k)
            alone.append(render_description(phrase))
            extra.append(render_description(Description((salient, added), (True, True), (True, True), None)))
    return {"pairing": beats(match, pixels, encode, rows, true, wrong),
            "mispaired_extra_wins": beats(match, pixels, encode, rows_extra, extra, alone)}


def beats(match: Callable, pixels, encode: WordPieceIds, rows: list[int], a: list[str], b: list[str]) -> float:
    """How often text a[j] scores above b[j] on image rows[j]; nan where no scene allowed the test
    (a smoke world of a few scenes)."""
    if not rows:
        return float("nan")
    return float(np.mean(match(pixels[rows], *encode(a)) > match(pixels[rows], *encode(b))))


def match_logit_fn(model: Blip2Itm) -> Callable:
    """(pixels, ids, mask) -> match logits (N,), one compiled function for every call."""
    return chunked(model, lambda m, p, i, k: m(p, i, k)[:, 1])
