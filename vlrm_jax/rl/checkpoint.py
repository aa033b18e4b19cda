"""The training state on disk: one composite orbax checkpoint per saved step.

Each checkpoint holds the whole `TrainState` (both networks' trainable parameters, both Adam
states, step, base key, skip counters) as a flat {path: array} dict, and a JSON record of the
loop (data position, counters). orbax writes a step into a temporary folder and renames it when
complete, and `latest_step` lists only finished steps, so a save cut short by a crash is never
loaded. Saves are asynchronous: the next steps compute while the previous state is written.
"""
from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath


def _flat(tree) -> dict[str, jax.Array]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): leaf for path, leaf in leaves}


def _unflat(flat: dict, template):
    paths, treedef = jax.tree_util.tree_flatten_with_path(template)
    missing = [jax.tree_util.keystr(p) for p, _ in paths if jax.tree_util.keystr(p) not in flat]
    if missing:
        raise ValueError(f"checkpoint lacks {len(missing)} arrays of the training state, e.g. {missing[0]}")
    return jax.tree_util.tree_unflatten(treedef, [flat[jax.tree_util.keystr(p)] for p, _ in paths])


CHECKPOINT_URLS = ("gs://",)  # what orbax's path layer (etils.epath) writes to besides local folders


def is_url(path) -> bool:
    return "://" in str(path)


def as_epath(path: str | Path) -> epath.Path:
    """A local folder made absolute, a URL as given: epath reads both alike."""
    return epath.Path(path if is_url(path) else Path(path).absolute())


def checkpoint_location(workdir: str | Path, checkpoint_dir: str = "") -> epath.Path:
    """Where a run's checkpoints live: checkpoint_dir (a folder or a gs:// URL), else WORKDIR/checkpoints."""
    return as_epath(checkpoint_dir or Path(workdir) / "checkpoints")


class Checkpoints:
    def __init__(self, directory: str | Path, keep: int = 3, asynchronous: bool = True):
        self.directory = as_epath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=asynchronous, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, record: dict) -> None:
        """Start writing `state` and the loop's `record` as checkpoint `step` (returns at once)."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(_flat(state)), loop=ocp.args.JsonSave(record))
        self.manager.save(step, args=args, force=True)

    def restore(self, template, step: int | None = None):
        """(state laid out and placed like `template`, loop record) of `step` (default: latest)."""
        step = self.latest_step() if step is None else step
        flat_template = _flat(template)
        abstract = {k: ocp.utils.to_shape_dtype_struct(v) for k, v in flat_template.items()}
        out = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), loop=ocp.args.JsonRestore()))
        return _unflat(dict(out.state), template), dict(out.loop)

    def wait(self) -> None:
        """Block until every asynchronous save is on disk; raises what a save raised."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def tree_equal(a, b) -> bool:
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
