"""PPO's reuse of one rollout (A2CConfig.epochs / minibatches): which rows each optimizer step
reads, and how the steps' metrics are reported. The rollout is the costly part of a step (and at
the released shapes the ViT-g, the reward models and the sampling loop all sit in it), so passing
over it several times is the cheapest way to more updates per sampled caption."""
from __future__ import annotations

import jax
import jax.numpy as jnp

# fold_in stream of the shuffle under the step's key (the rollout samples with the key itself)
SHUFFLE_STREAM = 1
# per-update metrics reported as the last update's value, not the mean over updates
LAST = ("skipped", "skipped_in_row", "lr")


def minibatch_plan(key, rows: int, epochs: int, minibatches: int):
    """(epochs * minibatches, rows / minibatches) int32 slots: the rows are cut into blocks of
    `minibatches` consecutive rows, and every epoch each block deals its rows out to the
    minibatches in a fresh random order (a function of `key` and the epoch). Minibatch j of epoch
    e takes row q * minibatches + plan[e * minibatches + j, q] of every block q.

    A shuffle within blocks, not over the whole batch: a block lies on one device whenever
    `minibatches` divides the rows each device holds, so taking a minibatch moves no row between
    devices by construction (a global permutation is a gather across devices), and
    every minibatch draws evenly from every device's rows. The plan does not depend on the mesh,
    so one device and any mesh take the same minibatches."""
    if rows % minibatches:
        raise ValueError(f"{rows} rollout rows do not split into a2c.minibatches={minibatches}")
    blocks = rows // minibatches
    order = jnp.stack([jnp.argsort(jax.random.uniform(jax.random.fold_in(key, e), (blocks, minibatches)), axis=1)
                       for e in range(epochs)])  # (epochs, blocks, minibatches): a permutation per block
    return order.transpose(0, 2, 1).reshape(epochs * minibatches, blocks).astype(jnp.int32)


def take_rows(tree, slots, minibatches: int):
    """The minibatch `slots` ((rows / minibatches,) from `minibatch_plan`) of every array of a
    per-row record, as a select over each block (no gather: exact, and local to each device)."""
    def take(x):
        blocks = x.reshape(x.shape[0] // minibatches, minibatches, *x.shape[1:])
        pick = (jnp.arange(minibatches)[None, :] == slots[:, None]).reshape(*blocks.shape[:2], *[1] * (x.ndim - 1))
        return jnp.sum(jnp.where(pick, blocks, jnp.zeros((), x.dtype)), axis=1).astype(x.dtype)

    return jax.tree.map(take, tree)


def summarise(per_update: dict) -> dict:
    """Metrics stacked over the updates of one step -> one value each: the mean over updates,
    the last value for counters and the learning rate, and update_ok when every update was."""
    out = {}
    for name, value in per_update.items():
        if name == "update_ok":
            out[name] = jnp.all(value)
        elif name in LAST:
            out[name] = value[-1]
        else:
            out[name] = jnp.mean(value, axis=0)
    return out
