"""Where the step's models live: their weights placed on the mesh (or the one device), the ITM's
ViT trunk pointed at the captioner's when the two are equal, and what the placed arrays cost."""
from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from vlrm_jax import sharding as shd
from vlrm_jax import sharing

def place(module: nnx.Module, mesh, rules) -> None:
    if mesh is None and is_abstract(module):
        raise ValueError("an abstract step needs a mesh over the target's devices")
    if mesh is not None:
        shd.shard_module(module, mesh, rules)
        return
    device = jax.devices()[0]
    for _, var in nnx.to_flat_state(nnx.state(module, nnx.Param)):
        var.set_value(jax.device_put(var.get_value(), device))


def alias_trunk(itm, captioner) -> None:
    """Point every ITM ViT parameter but its final LayerNorm at the captioner's (equal) array."""
    source = dict(nnx.to_flat_state(nnx.state(captioner, nnx.Param)))
    for path, var in nnx.to_flat_state(nnx.state(itm, nnx.Param)):
        if _is_trunk(path):
            var.set_value(source[path].get_value())


def is_abstract(module: nnx.Module) -> bool:
    """Whether the module's parameters are shapes only (built with `nnx.eval_shape`)."""
    leaves = jax.tree.leaves(nnx.state(module, nnx.Param))
    return bool(leaves) and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)


def decide(given: bool | None, compare, abstract: bool, what: str) -> sharing.SharingReport:
    if given is not None:
        return sharing.SharingReport(bool(given), f"{what}={bool(given)} given")
    if abstract:
        raise ValueError(f"{what}: abstract models have no weights to compare; give True or False")
    return compare()


def _is_trunk(path: tuple) -> bool:
    return path[0] == "vision_model" and not any(name in path for name in sharing.TRUNK_EXCLUDED)


def without_trunk(state):
    """A model state without the ViT trunk's entries (the ITM's, when it is the captioner's)."""
    return nnx.from_flat_state([(p, v) for p, v in nnx.to_flat_state(state) if not _is_trunk(p)])


def trunk_only(state):
    """The captioner's ViT trunk entries of a state, which the ITM merges in as its own."""
    return nnx.from_flat_state([(p, v) for p, v in nnx.to_flat_state(state) if _is_trunk(p)])


def device_bytes(*trees) -> tuple[int, int]:
    """(bytes of all array leaves, bytes of the distinct device buffers among them), over every
    addressable shard: an array passed twice costs its bytes once."""
    total, seen = 0, {}
    for leaf in jax.tree.leaves(trees):
        if isinstance(leaf, jax.Array):
            for shard in leaf.addressable_shards:
                total += shard.data.nbytes
                seen[shard.data.unsafe_buffer_pointer()] = shard.data.nbytes
    return total, int(np.sum(list(seen.values()))) if seen else 0
