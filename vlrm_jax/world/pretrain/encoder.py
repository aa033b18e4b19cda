"""Image encoders pre-trained on scene parsing before they serve: BLIP2's EVA ViT and OpenCLIP's
tower were pre-trained on web data; here a dense read-out of the scene is the fast stand-in."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from vlrm_jax.world.pretrain.supervised import step_rng
from vlrm_jax.world import shapes
from vlrm_jax.world.pretrain.loop import train_phase
from vlrm_jax.world.pretrain.record import StageContext

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


def position_labels(n: int) -> np.ndarray:
    """(N, 9) int32: each cell's own index, the target of SceneParser's position head."""
    return np.tile(np.arange(CELLS, dtype=np.int32), (n, 1))


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
    class token.

    A classifier shared by all cells lets a token forget where it is: the ViT's object tokens then
    carried no position (a linear probe told their cell 14 % of the time, chance 11 %), and as
    the Q-Former's cross-attention has no positions of its own, neither the ITM nor the captioner
    could tell "at the top left" from "at the right". With `positions`, a second head reads each
    cell's own index from its tokens (position_labels), so the tokens keep it."""

    def __init__(self, encoder: nnx.Module, width: int, image_size: int, patch_size: int, *, rngs: nnx.Rngs,
                 positions: bool = False):
        self.encoder = encoder
        self.pooling = nnx.Variable(jnp.asarray(cell_pooling(image_size, patch_size)))
        per_cell = len(SHAPE_CLASSES) + len(COLOUR_CLASSES) + len(SIZE_CLASSES)
        self.cell_head = nnx.Linear(width, per_cell, rngs=rngs)
        self.background_head = nnx.Linear(width, len(BACKGROUND_CLASSES), rngs=rngs)
        self.position_head = nnx.Linear(width, CELLS, rngs=rngs) if positions else None

    def logits(self, tokens) -> list[jax.Array]:
        """tokens (B, 1 + patches, D) -> one logits array per label column of scene_labels, then
        (with positions) one per column of position_labels."""
        pooled = jnp.einsum("cp,bpd->bcd", self.pooling[...], tokens[:, 1:])
        cells = self.cell_head(pooled)
        shape, colour, size = jnp.split(cells, np.cumsum([len(SHAPE_CLASSES), len(COLOUR_CLASSES)]), axis=-1)
        per_cell = [z[:, c] for z in (shape, colour, size) for c in range(CELLS)]
        out = per_cell + [self.background_head(tokens[:, 0])]
        if self.position_head is not None:
            where = self.position_head(pooled)
            out += [where[:, c] for c in range(CELLS)]
        return out


def scene_parsing_loss(logits: list[jax.Array], labels) -> jax.Array:
    return jnp.mean(jnp.stack([optax.softmax_cross_entropy_with_integer_labels(z, labels[:, k]).mean()
                               for k, z in enumerate(logits)]))


def encoder_scenes(ctx: StageContext, phase) -> shapes.Split:
    """The scenes an image encoder pre-trains on: `phase.n_scenes` fresh ones drawn like the
    training split from their own stream (never captioned, never written), or the training split
    when unset. 6000 scenes were too few: the read-out fit them and misread the shape of 10 % of
    small held-out objects, an error the ITM, the captioner and the RL run all inherit."""
    n = phase.get("n_scenes", 0)
    if n < 0:
        raise ValueError(f"vision_pretrain.n_scenes must be >= 0 (0: the training split), got {n}")
    if not n:
        return ctx.world.train
    w = ctx.cfg.world
    return shapes.generate_split(w.seed, shapes.ENCODER_SPLIT, n, w.image_size, w.supersample)


def pretrain_encoder(ctx: StageContext, name: str, encoder: nnx.Module, tokens_fn: Callable,
                     to_pixels: Callable, patch_size: int, phase, seed: int) -> tuple[np.ndarray, float, dict]:
    """Train `encoder` in place to read out the scene; returns (losses, seconds, held-out
    accuracies). `tokens_fn(encoder, pixels)` -> (B, N, D); `to_pixels(uint8 images)` -> pixels."""
    pool = encoder_scenes(ctx, phase)
    pixels = np.concatenate([to_pixels(pool.images[k:k + 1000]) for k in range(0, len(pool), 1000)])
    size = pixels.shape[1]
    width = jax.eval_shape(lambda p: tokens_fn(encoder, p), jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)).shape[-1]
    positions = bool(phase.get("cell_positions", False))
    parser = SceneParser(encoder, width, size, patch_size, rngs=nnx.Rngs(seed), positions=positions)
    labels = scene_labels(pool.scenes)
    if positions:
        labels = np.concatenate([labels, position_labels(len(pool))], axis=1)

    def batch_at(step):
        rows = step_rng(seed, step).integers(len(pixels), size=phase.batch_size)
        return {"pixels": pixels[rows], "labels": labels[rows]}

    def loss_fn(parser, batch):
        return scene_parsing_loss(parser.logits(tokens_fn(parser.encoder, batch["pixels"])), batch["labels"])

    losses, seconds = train_phase(ctx, name, parser, loss_fn, batch_at, phase)
    return losses, seconds, parsing_accuracy(parser, tokens_fn, ctx.world.test, to_pixels)


def parsing_accuracy(parser: SceneParser, tokens_fn, split: shapes.Split, to_pixels: Callable) -> dict:
    """Held-out read-out accuracy: `all` over every label of scene_labels (empty cells included,
    so it flatters), `objects` over the objects read whole (shape, colour and size),
    `small_shapes` over the shapes of small objects, the hardest to read at this resolution, and
    (with a position head) `positions` over the cells of the objects told from their tokens."""
    graphdef, state = nnx.split(parser)

    @jax.jit
    def predict(state, pixels):
        model = nnx.merge(graphdef, state)
        return jnp.stack([z.argmax(-1) for z in model.logits(tokens_fn(model.encoder, pixels))], axis=1)

    return read_out_accuracy(np.asarray(predict(state, to_pixels(split.images))), split.scenes)


def read_out_accuracy(predicted: np.ndarray, scenes) -> dict:
    """`predicted` (N, columns of scene_labels [+ position_labels]) against the scenes' labels."""
    labels = scene_labels(scenes)
    where = predicted[:, labels.shape[1]:]  # the position head's columns, if any
    predicted = predicted[:, :labels.shape[1]]
    whole, small, placed = [], [], []
    for i, scene in enumerate(scenes):
        for o in scene.objects:
            columns = [o.cell, CELLS + o.cell, 2 * CELLS + o.cell]
            whole.append(bool(np.all(predicted[i, columns] == labels[i, columns])))
            if o.size == "small":
                small.append(bool(predicted[i, o.cell] == labels[i, o.cell]))
            if where.shape[1]:
                placed.append(bool(where[i, o.cell] == o.cell))
    out = {"all": float(np.mean(predicted == labels)), "objects": float(np.mean(whole)),
           "small_shapes": float(np.mean(small)) if small else float("nan")}
    if where.shape[1]:
        out["positions"] = float(np.mean(placed)) if placed else float("nan")
    return out


def vision_metrics(parsing: dict) -> dict:
    """parsing_accuracy's dict as a stage's metrics."""
    out = {"vision_parsing_accuracy": parsing["all"], "vision_object_accuracy": parsing["objects"],
           "vision_small_shape_accuracy": parsing["small_shapes"]}
    if "positions" in parsing:
        out["vision_position_accuracy"] = parsing["positions"]
    return out


def vit_tokens(vit, pixels):
    return vit(pixels)


def clip_vision_tokens(tower, pixels):
    """Every token of OpenCLIP's image tower after `ln_post` (its forward, before pooling)."""
    return tower.ln_post(tower.trunk(pixels))
