"""Supervised pre-training of the shapes world's four models, each saved as a model folder.

The folders load exactly as converted real models do (`Captioner.load`, `ReferenceLM.load`,
`ItmScorer.load`, `ClipModel.load`), so every later consumer runs unchanged on them. The stages
mirror how the real BLIP2 stack was built (configs/shapes.py explains the choice):

    reference_lm   OPT on every caption style (full, paraphrases, terse, partial descriptions)
    itm            BLIP2-ITM: its ViT first learns to read out the scene (phase itm_vision), then
                   is frozen while the Q-Former learns graded match targets (+ ranking, ITC)
    captioner      BLIP2: ViT = the ITM's ViT (frozen, so the RL run can share the trunk), OPT
                   started from the reference LM; query tokens, Q-Former, projection and OPT learn
                   the short captions while OPT keeps the reference LM's loss on every style
    clip           OpenCLIP: its own image tower pre-trained the same way from its own seed
                   (phase clip_vision), then symmetric InfoNCE on the full captions

Dense kernels outside the pre-trained towers are redrawn with a fan-in scale (fan_in_init): the
models' own 0.02 init suits width 768, not 64, and left the Q-Formers on long plateaus.

Each stage is deterministic in its seed (batch i is drawn from its own numpy stream), logs its
loss to TensorBoard (`<workdir>/tb/<stage>`) and a PNG (`<workdir>/plots/<stage>_loss.png`), and
is skipped when its folder holds a `pretrain.json` with the same stage hash (the stage's config,
the world's config, the hashes of the stages it builds on and PRETRAIN_VERSION).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from vlrm_jax.checkpoint.model_dir import write_model_dir
from vlrm_jax.metrics import ScalarLog
from vlrm_jax.models import build, common
from vlrm_jax.models.blip2 import POLICY_TRAINABLE, Blip2Captioner, Blip2Config, parts_filter
from vlrm_jax.models.itm import Blip2Itm, ItmConfig
from vlrm_jax.models.opt import OPTConfig, OPTForCausalLM
from vlrm_jax.models.qformer import QFormerConfig
from vlrm_jax.models.vit import VisionConfig
from vlrm_jax.world import shapes
from vlrm_jax.world.language import (complete_description, corrupt, match_target, partial_description,
                                     render_description, terse_description)

# Bump when a change to this file changes what a stage trains, so cached folders are redone.
PRETRAIN_VERSION = 1
STAGES = ("reference_lm", "itm", "captioner", "clip")
DEPENDS_ON = {"captioner": ("reference_lm", "itm")}
STAGE_FILE = "pretrain.json"  # next to config.json: how and from what the folder was trained
LOG_EVERY = 25


# ----------------------------------------------------------------------------------------------
# Where things go, and what a stage hands back.
# ----------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------
# Stage caching.
# ----------------------------------------------------------------------------------------------
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


def _save_stage(ctx: StageContext, stage: str, kind: str, model_config: dict, module: nnx.Module,
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


def tokenizer_files(folder: Path) -> list[Path]:
    """The files `tokenizer.save_pretrained` wrote, to copy into a model folder."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file())


# ----------------------------------------------------------------------------------------------
# Loss curves: TensorBoard (vlrm_jax.metrics) and a PNG.
# ----------------------------------------------------------------------------------------------
def plot_losses(losses: np.ndarray, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(losses, lw=0.6, alpha=0.4, label="step")
    window = max(1, min(LOG_EVERY, len(losses)))
    smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
    ax.plot(np.arange(window - 1, len(losses)), smooth, lw=1.5, label=f"mean of {window}")
    ax.set(title=title, xlabel="step", ylabel="loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# The training loop every stage shares.
# ----------------------------------------------------------------------------------------------
def make_optimizer(opt_cfg, steps: int) -> optax.GradientTransformation:
    """AdamW on a linear warm-up then cosine decay; no weight decay on biases, norms and scalars."""
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, opt_cfg.learning_rate, min(opt_cfg.warmup_steps, max(steps - 1, 1)), max(steps, 2),
        end_value=opt_cfg.learning_rate * opt_cfg.end_lr_fraction)
    decay_mask = lambda params: jax.tree.map(lambda x: x.ndim >= 2, params)  # noqa: E731
    return optax.chain(
        optax.clip_by_global_norm(opt_cfg.grad_clip_norm),
        optax.adamw(schedule, b1=opt_cfg.b1, b2=opt_cfg.b2, weight_decay=opt_cfg.weight_decay,
                    mask=decay_mask))


def fit(model: nnx.Module, loss_fn: Callable, batch_at: Callable[[int], dict], steps: int,
        opt_cfg, stage: str, log: ScalarLog, trainable=nnx.Param) -> np.ndarray:
    """Train `model` in place on `loss_fn(model, batch)`; returns the per-step losses.

    Pure-function style (split once, one jitted step over arrays, donated buffers), so a step
    costs no Python graph traversal; only the `trainable` parameters get gradients and optimizer
    state, everything else rides along frozen.
    """
    graphdef, params, frozen = nnx.split(model, trainable, ...)
    # Inputs as the step's outputs will be (strong types, committed to the device), or the
    # second step compiles again: a weak-typed leaf (a Python float put into a parameter) or an
    # uncommitted array beside committed ones (restored weights) is a different cache key.
    device = jax.devices()[0]
    params, frozen = jax.device_put(jax.tree.map(lambda x: jnp.array(x, dtype=x.dtype), (params, frozen)), device)
    tx = make_optimizer(opt_cfg, steps)
    opt_state = jax.device_put(tx.init(params), device)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def train_step(params, opt_state, frozen, batch):
        loss, grads = jax.value_and_grad(lambda p: loss_fn(nnx.merge(graphdef, p, frozen), batch))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses: list[float] = []
    pending: list[jax.Array] = []  # fetched every LOG_EVERY steps: no host sync per step
    bar = tqdm(range(steps), desc=stage, unit="step", dynamic_ncols=True)
    for step in bar:
        params, opt_state, loss = train_step(params, opt_state, frozen, batch_at(step))
        pending.append(loss)
        if len(pending) == LOG_EVERY or step == steps - 1:
            values = [float(v) for v in jax.device_get(pending)]
            log.scalars(len(losses), "loss", values)
            losses += values
            pending = []
            bar.set_postfix(loss=f"{np.mean(values):.4f}")
    bar.close()
    nnx.update(model, params)
    return np.asarray(losses, np.float32)


def fan_in_init(module: nnx.Module, seed: int, skip: tuple[str, ...] = ()) -> None:
    """Redraw every dense kernel as normal(0, 1 / sqrt(fan_in)).

    The model classes initialise like transformers (std 0.02), which suits widths near 768: at
    width 64 each layer then shrinks its input about 8 times, the image reaches the Q-Former's
    output as a product of such factors, and training sits on a plateau for hundreds of steps
    (measured: 200 steps flat at log 2 on a one-word colour check, none with this init)."""
    key = jax.random.key(seed)
    state = nnx.state(module, nnx.Param)
    flat = []
    for path, var in nnx.to_flat_state(state):
        value = var.get_value()
        if path[-1] == "kernel" and value.ndim >= 2 and not any(p in skip for p in path):
            # (in, out), stacked (layers, in, out) or conv (kh, kw, in, out)
            fan_in = int(np.prod(value.shape[:-1])) if value.ndim == 4 else value.shape[-2]
            key, sub = jax.random.split(key)
            var = var.replace(jax.random.normal(sub, value.shape, value.dtype) / np.sqrt(fan_in))
        flat.append((path, var))
    nnx.update(module, nnx.from_flat_state(flat))


def step_rng(seed: int, step: int) -> np.random.Generator:
    """Batch `step` of a stage comes from its own stream: the same batches whatever ran before."""
    return np.random.default_rng(np.random.SeedSequence([seed, step]))


def next_token_loss(logits, ids, mask):
    """Mean cross-entropy of predicting ids[:, 1:] from logits[:, :-1] where mask[:, 1:] is set."""
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32))
    picked = jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]
    weight = mask[:, 1:].astype(jnp.float32)
    return -(picked * weight).sum() / jnp.maximum(weight.sum(), 1.0)


TEXTS_PER_IMAGE = 4  # two (correct, wrong) pairs, see itm_texts


def itm_texts(scene: shapes.Scene, other: shapes.Scene, rng: np.random.Generator,
              floor: float) -> list[tuple[str, float]]:
    """Two (correct, wrong) pairs of (text, match target) for one image:
    the full caption (1) and the same caption with one detail made wrong (0); a true partial or
    terse description (graded, see match_target) and the same with one detail made wrong, or now
    and then another scene's full caption (0). Pairs that differ in one detail are what teaches
    the ITM to check every detail (the ranking term of itm_loss compares them)."""
    n_templates = len(shapes.FULL_TEMPLATES)
    full = complete_description(scene, int(rng.integers(n_templates)))
    partial = terse_description(scene) if rng.random() < 0.2 else partial_description(scene, rng)
    if rng.random() < 0.2:
        partial_wrong = shapes.full_caption(other, int(rng.integers(n_templates)))
    else:
        partial_wrong = render_description(corrupt(partial, scene, rng))
    return [(render_description(full), 1.0), (render_description(corrupt(full, scene, rng)), 0.0),
            (render_description(partial), match_target(partial, scene, floor)), (partial_wrong, 0.0)]


# ----------------------------------------------------------------------------------------------
# Tokenising world text.
# ----------------------------------------------------------------------------------------------
def opt_ids(tokenizer, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """[BOS] text [EOS], right-padded to the longest: int32 ids and mask (B, T)."""
    rows = [ids + [tokenizer.eos_token_id] for ids in tokenizer(texts).input_ids]
    length = max(map(len, rows))
    out = np.full((len(rows), length), tokenizer.pad_token_id, np.int32)
    mask = np.zeros((len(rows), length), np.int32)
    for i, row in enumerate(rows):
        out[i, :len(row)], mask[i, :len(row)] = row, 1
    return out, mask


class WordPieceIds:
    """[CLS] text [SEP] ids of world text, memoised per word: world words are whole WordPiece
    tokens, so a text's ids are its words' ids. Several times faster than calling the tokenizer
    per batch; `check` compares against the tokenizer itself."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer, self.max_length = tokenizer, max_length
        self._words: dict[str, list[int]] = {}

    def _word(self, word: str) -> list[int]:
        if word not in self._words:
            self._words[word] = self.tokenizer(word, add_special_tokens=False).input_ids
        return self._words[word]

    def encode(self, text: str) -> list[int]:
        ids = [i for w in re.findall(r"[^\W_]+|[^\w\s]|_", text.lower()) for i in self._word(w)]
        tok = self.tokenizer
        return [tok.cls_token_id] + ids[: self.max_length - 2] + [tok.sep_token_id]

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        ids = np.full((len(texts), self.max_length), self.tokenizer.pad_token_id, np.int32)
        mask = np.zeros((len(texts), self.max_length), np.int32)
        for i, text in enumerate(texts):
            row = self.encode(text)
            ids[i, :len(row)], mask[i, :len(row)] = row, 1
        return ids, mask

    def check(self, texts: list[str]) -> None:
        want = self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.max_length,
                              return_tensors="np")
        ids, mask = self(texts)
        if not (np.array_equal(ids, want["input_ids"]) and np.array_equal(mask, want["attention_mask"])):
            raise AssertionError("memoised WordPiece ids differ from the tokenizer's")


def load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def clip_pixels(images: np.ndarray, size: int) -> np.ndarray:
    """open_clip's eval transform with its default settings (what `preprocess_config` writes)."""
    from vlrm_jax.data.preprocess import open_clip_pixel_values

    return open_clip_pixel_values(list(images), image_size=size)


def blip2_pixels(images: np.ndarray, size: int) -> np.ndarray:
    from vlrm_jax.data.preprocess import blip2_pixel_values

    return blip2_pixel_values(list(images), size=size)


# ----------------------------------------------------------------------------------------------
# Stage 1: the reference LM.
# ----------------------------------------------------------------------------------------------
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

    losses, seconds = _train(ctx, "reference_lm", model, loss_fn, batch_at, scfg)
    return _save_stage(ctx, "reference_lm", "opt", dataclasses.asdict(model_cfg), model, losses, seconds,
                       {"corpus_texts": len(ids)}, tokenizer_files(ctx.tokenizer_dirs["captioner"]))


def _train(ctx: StageContext, name: str, model, loss_fn, batch_at, phase, trainable=nnx.Param):
    """`fit` with the loss logged under `name` (TensorBoard and PNG); returns (losses, seconds).
    `phase` holds steps and optimizer (a stage config or one of its phases)."""
    log = ScalarLog(ctx.workdir.tensorboard(name))
    start = time.perf_counter()
    try:
        losses = fit(model, loss_fn, batch_at, phase.steps, phase.optimizer, name, log, trainable)
    finally:
        log.close()
    seconds = time.perf_counter() - start
    plot_losses(losses, f"{name} ({phase.steps} steps, {seconds:.0f} s)", ctx.workdir.loss_plot(name))
    return losses, seconds


# ----------------------------------------------------------------------------------------------
# Image encoders: pre-trained on scene parsing before they serve (BLIP2's EVA ViT and OpenCLIP's
# tower were pre-trained on web data; here a dense read-out of the scene is the fast stand-in).
# ----------------------------------------------------------------------------------------------
CELLS = shapes.GRID ** 2
SHAPE_CLASSES = ("none",) + shapes.SHAPES
COLOUR_CLASSES = ("none",) + tuple(shapes.OBJECT_COLOURS)
SIZE_CLASSES = ("none",) + shapes.SIZES
BACKGROUND_CLASSES = tuple(shapes.BACKGROUND_COLOURS)


def scene_labels(scenes) -> np.ndarray:
    """(N, 3 * 9 + 1) int32: each cell's shape, colour and size class (0 = empty), then the background."""
    out = np.zeros((len(scenes), 3 * CELLS + 1), np.int32)
    for i, scene in enumerate(scenes):
        for o in scene.objects:
            out[i, o.cell] = SHAPE_CLASSES.index(o.shape)
            out[i, CELLS + o.cell] = COLOUR_CLASSES.index(o.colour)
            out[i, 2 * CELLS + o.cell] = SIZE_CLASSES.index(o.size)
        out[i, -1] = BACKGROUND_CLASSES.index(scene.background)
    return out


def cell_pooling(image_size: int, patch_size: int) -> np.ndarray:
    """(9, patches) weights that average the patch tokens over each grid cell (by overlap area)."""
    grid = image_size // patch_size
    edges = np.arange(grid + 1) * patch_size
    cell_edges = np.arange(shapes.GRID + 1) * image_size / shapes.GRID
    overlap = np.clip(np.minimum(edges[None, 1:], cell_edges[1:, None]) - np.maximum(edges[None, :-1], cell_edges[:-1, None]), 0, None)
    weights = np.einsum("rp,cq->rcpq", overlap, overlap).reshape(shapes.GRID ** 2, grid * grid)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


class SceneParser(nnx.Module):
    """An image encoder and a read-out of the scene: each cell's patch tokens, averaged, go through
    one classifier shared by all cells (so the attributes must be written into the tokens where the
    object is, which is what the Q-Former's cross-attention reads); the background comes from the
    class token."""

    def __init__(self, encoder: nnx.Module, width: int, image_size: int, patch_size: int, *, rngs: nnx.Rngs):
        self.encoder = encoder
        self.pooling = nnx.Variable(jnp.asarray(cell_pooling(image_size, patch_size)))
        per_cell = len(SHAPE_CLASSES) + len(COLOUR_CLASSES) + len(SIZE_CLASSES)
        self.cell_head = nnx.Linear(width, per_cell, rngs=rngs)
        self.background_head = nnx.Linear(width, len(BACKGROUND_CLASSES), rngs=rngs)

    def logits(self, tokens) -> list[jax.Array]:
        """tokens (B, 1 + patches, D) -> one logits array per label column of scene_labels."""
        cells = self.cell_head(jnp.einsum("cp,bpd->bcd", self.pooling[...], tokens[:, 1:]))
        shape, colour, size = jnp.split(cells, np.cumsum([len(SHAPE_CLASSES), len(COLOUR_CLASSES)]), axis=-1)
        per_cell = [z[:, c] for z in (shape, colour, size) for c in range(CELLS)]
        return per_cell + [self.background_head(tokens[:, 0])]


def scene_parsing_loss(logits: list[jax.Array], labels) -> jax.Array:
    return jnp.mean(jnp.stack([optax.softmax_cross_entropy_with_integer_labels(z, labels[:, k]).mean()
                               for k, z in enumerate(logits)]))


def pretrain_encoder(ctx: StageContext, name: str, encoder: nnx.Module, tokens_fn: Callable,
                     pixels: np.ndarray, patch_size: int, phase, seed: int) -> tuple[np.ndarray, float, float]:
    """Train `encoder` in place to read out the scene; returns (losses, seconds, held-out accuracy
    over every cell attribute and the background). `tokens_fn(encoder, pixels)` -> (B, N, D)."""
    size = pixels.shape[1]
    width = jax.eval_shape(lambda p: tokens_fn(encoder, p), jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)).shape[-1]
    parser = SceneParser(encoder, width, size, patch_size, rngs=nnx.Rngs(seed))
    labels = scene_labels(ctx.world.train.scenes)

    def batch_at(step):
        rows = step_rng(seed, step).integers(len(pixels), size=phase.batch_size)
        return {"pixels": pixels[rows], "labels": labels[rows]}

    def loss_fn(parser, batch):
        return scene_parsing_loss(parser.logits(tokens_fn(parser.encoder, batch["pixels"])), batch["labels"])

    losses, seconds = _train(ctx, name, parser, loss_fn, batch_at, phase)
    return losses, seconds, _parsing_accuracy(parser, tokens_fn, ctx.world.test, pixels.shape[1])


def _parsing_accuracy(parser: SceneParser, tokens_fn, split: shapes.Split, size: int) -> float:
    graphdef, state = nnx.split(parser)

    @jax.jit
    def predict(state, pixels):
        model = nnx.merge(graphdef, state)
        return jnp.stack([z.argmax(-1) for z in model.logits(tokens_fn(model.encoder, pixels))], axis=1)

    pixels = clip_pixels(split.images, size) if tokens_fn is clip_vision_tokens else blip2_pixels(split.images, size)
    return float(np.mean(np.asarray(predict(state, pixels)) == scene_labels(split.scenes)))


def vit_tokens(vit, pixels):
    return vit(pixels)


def clip_vision_tokens(tower, pixels):
    """Every token of OpenCLIP's image tower after `ln_post` (its forward, before pooling)."""
    patches = tower.conv1(pixels)
    b, d = patches.shape[0], patches.shape[-1]
    cls = jnp.broadcast_to(tower.class_embedding[...], (b, 1, d))
    x = jnp.concatenate([cls, patches.reshape(b, -1, d)], axis=1) + tower.positional_embedding[...]
    if tower.ln_pre is not None:
        x = tower.ln_pre(x)
    x, _ = common.scan_stack(tower.blocks, lambda layer, h, _: (layer(h, None), None), x)
    return tower.ln_post(x)


# ----------------------------------------------------------------------------------------------
# Stage 2: BLIP2-ITM.
# ----------------------------------------------------------------------------------------------
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
    vision_losses, vision_seconds, parsing_accuracy = pretrain_encoder(
        ctx, "itm_vision", model.vision_model, vit_tokens, pixels, model_cfg.vision.patch_size,
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
    losses, seconds = _train(ctx, "itm", model, loss_fn, batch_at, scfg, trainable)
    metrics = {"vision_parsing_accuracy": parsing_accuracy, "vision_seconds": vision_seconds,
               "vision_final_loss": float(np.mean(vision_losses[-LOG_EVERY:])),
               **itm_preferences(model, ctx.world.test, encode, scfg)}
    return _save_stage(ctx, "itm", "blip2_itm", model_cfg.to_dict(), model, losses, seconds + vision_seconds,
                       metrics, tokenizer_files(ctx.tokenizer_dirs["itm"]))


def _itm_batch_texts(split: shapes.Split, index: int, scfg, rng) -> list[tuple[str, float]]:
    other = (index + 1 + int(rng.integers(len(split) - 1))) % len(split) if len(split) > 1 else index
    return itm_texts(split.scenes[index], split.scenes[other], rng, scfg.partial_floor)


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
    return out


def match_logit_fn(model: Blip2Itm, chunk: int = 250) -> Callable:
    """(pixels, ids, mask) -> match logits (N,), one compiled function for every call."""
    graphdef, state = nnx.split(model)
    run = jax.jit(lambda s, p, i, m: nnx.merge(graphdef, s)(p, i, m)[:, 1])
    return lambda pixels, ids, mask: np.concatenate([
        np.asarray(run(state, pixels[k:k + chunk], ids[k:k + chunk], mask[k:k + chunk]))
        for k in range(0, len(ids), chunk)])


# ----------------------------------------------------------------------------------------------
# Stage 3: the captioner.
# ----------------------------------------------------------------------------------------------
def captioner_config(cfg, itm_cfg: ItmConfig, lm_cfg: OPTConfig) -> Blip2Config:
    scfg = cfg.captioner
    qformer = QFormerConfig(**{**scfg.qformer.to_dict(), "encoder_hidden_size": itm_cfg.vision.hidden_size})
    return Blip2Config(vision=itm_cfg.vision, qformer=qformer, text=lm_cfg,
                       num_query_tokens=scfg.num_query_tokens, image_token_index=None)


def vision_states(vit: nnx.Module, pixels: np.ndarray, chunk: int = 250) -> np.ndarray:
    """The frozen ViT's output for every image, computed once for a whole stage."""
    graphdef, state = nnx.split(vit)
    run = jax.jit(lambda s, p: nnx.merge(graphdef, s)(p))
    return np.concatenate([np.asarray(run(state, pixels[k:k + chunk])) for k in range(0, len(pixels), chunk)])


def short_caption(scene: shapes.Scene, style: str) -> str:
    """The base captioner's target: "terse" is the world's "a red circle"; "sized" adds the size,
    "a large red circle", the same one object in the 4 tokens the paper's min_new_tokens=4 asks
    for (with 3-token targets the beam pads to 4 words: "a brown orange circle")."""
    if style == "terse":
        return shapes.terse_caption(scene)
    if style == "sized":
        return shapes.object_phrase(shapes.most_salient(scene), True, False)
    raise ValueError(f"unknown caption style {style!r}; expected 'terse' or 'sized'")


def caption_targets(world: shapes.World, style: str, full_fraction: float, seed: int) -> list[str]:
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    return [shapes.full_caption(s) if rng.random() < full_fraction else short_caption(s, style)
            for s in world.train.scenes]


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
    ids, mask = opt_ids(tokenizer, caption_targets(ctx.world, scfg.caption_style, scfg.full_caption_fraction, scfg.seed))
    lm_ids, lm_mask = opt_ids(tokenizer, lm_corpus(ctx.world, ctx.cfg.reference_lm.seed))
    states = vision_states(model.vision_model, blip2_pixels(ctx.world.train.images, model_cfg.vision.image_size))

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
    losses, seconds = _train(ctx, "captioner", model, loss_fn, batch_at, scfg, trainable)
    return _save_stage(ctx, "captioner", "blip2_opt", model_cfg.to_dict(), model, losses, seconds,
                       {"trainable": list(parts)}, tokenizer_files(ctx.tokenizer_dirs["captioner"]))


# ----------------------------------------------------------------------------------------------
# Stage 4: CLIP.
# ----------------------------------------------------------------------------------------------
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
    norm = lambda x: x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)  # noqa: E731
    logits = jnp.exp(jnp.minimum(log_scale, jnp.log(100.0))) * norm(image_emb) @ norm(text_emb).T
    labels = jnp.arange(logits.shape[0])
    ce = lambda z: optax.softmax_cross_entropy_with_integer_labels(z, labels).mean()  # noqa: E731
    return 0.5 * (ce(logits) + ce(logits.T))


def train_clip(ctx: StageContext) -> StageResult:
    from convert import open_clip as oc_convert
    from vlrm_jax.models.clip import ClipConfig, ClipModel
    from vlrm_jax.world.tokenizers import clip_tokenizer

    scfg = ctx.cfg.clip
    oc_cfg = open_clip_model_config(ctx.cfg)
    model_cfg = ClipConfig.from_open_clip(oc_cfg)
    preprocess = oc_convert.preprocess_config(model_cfg, {})
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
    vision_losses, vision_seconds, parsing_accuracy = pretrain_encoder(
        ctx, "clip_vision", model.visual, clip_vision_tokens, pixels, model_cfg.vision.patch_size[0],
        scfg.vision_pretrain, scfg.seed + 100)

    def batch_at(step):
        rng = step_rng(scfg.seed, step)
        rows = rng.choice(len(ids), size=scfg.batch_size, replace=False)  # distinct scenes: no false negatives
        return {"pixels": pixels[rows], "ids": ids[rows, rng.integers(n_templates, size=len(rows))]}

    def loss_fn(model, batch):
        return infonce_loss(model.encode_image(batch["pixels"]), model.encode_text(batch["ids"]),
                            model.logit_scale[...])

    losses, seconds = _train(ctx, "clip", model, loss_fn, batch_at, scfg)
    metrics = {"logit_scale": float(jnp.exp(model.logit_scale[...])), "vision_parsing_accuracy": parsing_accuracy,
               "vision_seconds": vision_seconds, "vision_final_loss": float(np.mean(vision_losses[-LOG_EVERY:]))}
    seconds += vision_seconds
    with tempfile.TemporaryDirectory() as side:
        files = oc_convert.write_side_files(side, oc_cfg, preprocess, "shapes-clip", "vlrm_jax.world.pretrain")
        return _save_stage(ctx, "clip", oc_convert.KIND, model_cfg.to_dict(), model, losses, seconds, metrics,
                           [Path(f) for f in files])


# ----------------------------------------------------------------------------------------------
# All stages.
# ----------------------------------------------------------------------------------------------
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

