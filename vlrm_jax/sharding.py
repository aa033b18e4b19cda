"""Device mesh and logical-axis rules.

Parameters carry logical axis names (`logical_axes` metadata, see models/common.py); one rules
table maps them onto mesh axes. The default keeps weights replicated over `data` and splits the
wide dimensions over `model`, so the same code runs on one CPU, a GPU and a TPU pod slice:
a mesh axis of size 1 costs nothing.
"""
from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vlrm_jax.models import build

BATCH_AXES = ("data",)
DEFAULT_RULES: tuple[tuple[str, str | None], ...] = (
    ("batch", "data"),
    ("vocab", "model"),
    ("mlp", "model"),
    ("heads", "model"),
    ("qkv", "model"),
    ("embed", None),
    ("layers", None),
    ("norm", None),
    ("qformer_embed", None),
    ("qformer_heads", None),
    ("qformer_mlp", None),
)


def make_mesh(shape: Sequence[int] | None = None, names: Sequence[str] = ("data", "model")) -> Mesh:
    """A mesh over all devices (default: everything on `data`), with Auto axis types so jit
    propagates shardings (inputs sharded over the batch, weights as the rules say)."""
    if shape is None:
        shape = (jax.device_count(),) + (1,) * (len(names) - 1)
    return jax.make_mesh(tuple(shape), tuple(names), axis_types=(jax.sharding.AxisType.Auto,) * len(names))


def spec_for(axes: Sequence[str | None], mesh: Mesh, rules=DEFAULT_RULES, shape: Sequence[int] | None = None) -> P:
    """PartitionSpec for logical axes; an axis is only split when the mesh has that axis, the
    dimension divides evenly and no earlier dimension already uses the same mesh axis."""
    table = dict(rules)
    used, out = set(), []
    for i, name in enumerate(axes):
        target = table.get(name) if name else None
        ok = target in mesh.shape and target not in used
        if ok and shape is not None:
            ok = shape[i] % mesh.shape[target] == 0
        out.append(target if ok else None)
        if ok:
            used.add(target)
    return P(*out)


def shard_module(module: nnx.Module, mesh: Mesh, rules=DEFAULT_RULES) -> nnx.Module:
    """Place every parameter on `mesh` as its logical axes and the rules say (in place)."""
    axes = build.logical_axes(module)
    for path, var in nnx.to_flat_state(nnx.state(module, nnx.Param)):
        value = var.get_value()
        spec = spec_for(axes[path], mesh, rules, value.shape)
        var.set_value(jax.device_put(value, NamedSharding(mesh, spec)))
    return module


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def shard_batch(x, mesh: Mesh):
    """Split the leading (batch) axis over `data`; the batch must divide evenly."""
    x = np.asarray(x) if not isinstance(x, jax.Array) else x
    n = mesh.shape[BATCH_AXES[0]]
    if x.shape[0] % n:
        raise ValueError(f"batch of {x.shape[0]} does not divide over {n} devices on the data axis")
    return jax.device_put(x, batch_sharding(mesh, x.ndim))
