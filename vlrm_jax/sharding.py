"""Device mesh and logical-axis rules.

The training mesh has three axes: `data` (batch split, weights replicated), `fsdp` (batch split
and the `embed` dimension of every weight split, ZeRO-3 style: each device holds a slice of each
weight and XLA gathers it where it is used) and `tensor` (heads, MLP and vocabulary dimensions
split). Parameters carry logical axis names (`logical_axes` metadata, see models/common.py), the
main activations are pinned with `constrain`, and one rules table maps logical names onto mesh
axes, so the same code runs on one CPU, a GPU and a TPU pod slice: a mesh axis of size 1 costs
nothing.

Rules are ordered (logical name, mesh axis | tuple of mesh axes | None) pairs; a logical name may
appear more than once and the first entry that applies wins. An entry applies to a dimension when
its mesh axes are in the mesh (a tuple keeps those present), no earlier dimension of the same
array uses them and the dimension divides evenly; otherwise the dimension is replicated.
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vlrm_jax.models import build

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the mesh axes a batch is split over, in this order
# Logical names of the activations pinned by `constrain` (no parameter uses them).
ACTIVATION_AXES = ("batch", "length", "act_embed")
PARAMETER_AXES = ("vocab", "mlp", "heads", "qkv", "embed", "layers", "norm",
                  "qformer_embed", "qformer_heads", "qformer_mlp")
LOGICAL_AXES = ACTIVATION_AXES + PARAMETER_AXES

DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", BATCH_AXES),
    ("length", None),
    ("act_embed", None),
    ("vocab", "tensor"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("qkv", "tensor"),
    ("embed", "fsdp"),
    ("layers", None),
    ("norm", None),
    ("qformer_embed", "fsdp"),
    ("qformer_heads", "tensor"),
    ("qformer_mlp", "tensor"),
    # a (data, model) mesh, as made for inference with Captioner.shard, splits the same wide
    # dimensions over `model` (these entries never apply on the training mesh)
    ("vocab", "model"),
    ("mlp", "model"),
    ("heads", "model"),
    ("qkv", "model"),
)
KNOWN_MESH_AXES = MESH_AXES + ("model",)


def make_mesh(shape: Sequence[int] | None = None, names: Sequence[str] = MESH_AXES, devices=None) -> Mesh:
    """A mesh over `devices` (default: all; shape default: everything on the first axis), with
    Auto axis types so jit propagates shardings (inputs sharded over the batch, weights as the
    rules say)."""
    devices = jax.devices() if devices is None else list(devices)
    if shape is None:
        shape = (len(devices),) + (1,) * (len(names) - 1)
    types = (jax.sharding.AxisType.Auto,) * len(names)
    try:
        return jax.make_mesh(tuple(shape), tuple(names), axis_types=types, devices=devices)
    except (ValueError, NotImplementedError):
        # a TPU slice whose physical axes do not factor into the mesh's sizes (tensor=2 on a
        # 4x4x4 v4 slice): let an axis span part of a physical one
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_device_mesh(tuple(shape), devices, allow_split_physical_axes=True)
        return jax.sharding.Mesh(grid, tuple(names), axis_types=types)


def mesh_shape(sizes: dict[str, int], device_count: int) -> tuple[int, ...]:
    """Sizes of (data, fsdp, tensor) with at most one -1 (the devices the others leave)."""
    values = [int(sizes[name]) for name in MESH_AXES]
    free = [i for i, v in enumerate(values) if v == -1]
    if len(free) > 1 or any(v == 0 or v < -1 for v in values):
        raise ValueError(f"mesh sizes {dict(zip(MESH_AXES, values))}: each must be >= 1, at most one -1")
    known = math.prod(v for v in values if v != -1)
    if free:
        if device_count % known:
            raise ValueError(f"{device_count} devices do not split into mesh sizes {dict(zip(MESH_AXES, values))}")
        values[free[0]] = device_count // known
    if math.prod(values) != device_count:
        raise ValueError(f"mesh {dict(zip(MESH_AXES, values))} holds {math.prod(values)} devices, "
                         f"{device_count} are present")
    return tuple(values)


def check_rules(rules) -> None:
    """Every entry a (known logical name, known mesh axis / tuple of them / None) pair."""
    for entry in rules:
        if not isinstance(entry, (tuple, list)) or len(entry) != 2:
            raise ValueError(f"rule {entry!r}: expected a (logical axis, mesh axis) pair")
        name, target = entry
        if name not in LOGICAL_AXES:
            raise ValueError(f"rule {entry!r}: unknown logical axis {name!r}; expected one of {LOGICAL_AXES}")
        targets = () if target is None else (target,) if isinstance(target, str) else tuple(target)
        for axis in targets:
            if axis not in KNOWN_MESH_AXES:
                raise ValueError(f"rule {entry!r}: unknown mesh axis {axis!r}; expected one of {KNOWN_MESH_AXES}")


def _present(target, mesh: Mesh) -> tuple[str, ...]:
    if target is None:
        return ()
    if isinstance(target, str):
        return (target,) if target in mesh.shape else ()
    return tuple(a for a in target if a in mesh.shape)


def spec_for(axes: Sequence[str | None], mesh: Mesh, rules=DEFAULT_RULES, shape: Sequence[int] | None = None) -> P:
    """PartitionSpec for logical axes (see the module docstring for when an entry applies)."""
    used, out = set(), []
    for i, name in enumerate(axes):
        chosen = None
        for logical, target in rules:
            if logical != name or name is None:
                continue
            present = _present(target, mesh)
            if not present or used & set(present):
                continue
            if shape is not None and shape[i] % math.prod(mesh.shape[a] for a in present):
                continue
            chosen = present
            break
        if chosen is None:
            out.append(None)
        else:
            used.update(chosen)
            out.append(chosen[0] if len(chosen) == 1 else chosen)
    return P(*out)


def constrain(x: jax.Array, axes: Sequence[str | None], mesh: Mesh | None, rules=DEFAULT_RULES) -> jax.Array:
    """Pin an activation's layout by its logical axes (inside jit); nothing without a mesh."""
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec_for(axes, mesh, rules, x.shape)))


def put(x, sharding: NamedSharding) -> jax.Array:
    """`jax.device_put`, also for a mesh that spans processes: there every process holds the
    same whole value (weights each loaded, a seed's key) and keeps the slices its devices own,
    since jax moves no array between hosts. A `jax.ShapeDtypeStruct` (an abstract model, built to
    be compiled and not run) gets the sharding as its own."""
    if isinstance(x, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
    if isinstance(x, jax.Array) and x.sharding == sharding:
        return x
    if jax.process_count() > 1 and not (isinstance(x, jax.Array) and not x.is_fully_addressable):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
    return jax.device_put(x, sharding)


def shard_module(module: nnx.Module, mesh: Mesh, rules=DEFAULT_RULES) -> nnx.Module:
    """Place every parameter on `mesh` as its logical axes and the rules say (in place)."""
    axes = build.logical_axes(module)
    for path, var in nnx.to_flat_state(nnx.state(module, nnx.Param)):
        value = var.get_value()
        spec = spec_for(axes[path], mesh, rules, value.shape)
        var.set_value(put(value, NamedSharding(mesh, spec)))
    return module


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
    """The batch axes this mesh has (a mesh without `fsdp` splits the batch over `data` alone)."""
    return tuple(a for a in BATCH_AXES if a in mesh.shape)


def batch_devices(mesh: Mesh) -> int:
    """How many ways a batch is split on this mesh."""
    return math.prod(mesh.shape[a] for a in batch_axes(mesh))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    return NamedSharding(mesh, P(batch_axes(mesh), *([None] * (ndim - 1))))


def process_rows(mesh: Mesh, global_rows: int) -> slice:
    """The rows of a global batch that this process's devices hold (one contiguous block: the
    process's share of the data is exactly what it feeds in)."""
    index_map = batch_sharding(mesh, 1).addressable_devices_indices_map((global_rows,))
    starts = sorted({idx[0].indices(global_rows)[:2] for idx in index_map.values()})
    for (_, stop), (start, _) in zip(starts, starts[1:]):
        if start != stop:
            raise ValueError(f"this process's devices hold rows {starts} of the batch, not one block: "
                             "order the mesh's devices by process")
    return slice(starts[0][0], starts[-1][1])


def shard_batch(x, mesh: Mesh, global_rows: int | None = None):
    """Split the leading (batch) axis over the batch axes; the batch must divide evenly.

    With one process `x` is the whole batch. With several, each passes the rows its devices hold
    (`process_rows(mesh, global_rows)`) and the global array of `global_rows` rows is assembled
    from the processes' parts."""
    n = batch_devices(mesh)
    rows = np.shape(x)[0] if global_rows is None else global_rows
    if rows % n:
        raise ValueError(f"batch of {rows} does not divide over {n} devices on the batch axes {batch_axes(mesh)}")
    sharding = batch_sharding(mesh, np.ndim(x))
    if jax.process_count() == 1:
        return jax.device_put(x if isinstance(x, jax.Array) else np.asarray(x), sharding)
    if global_rows is None:
        raise ValueError("with several processes shard_batch needs the global number of rows")
    x = np.asarray(x)
    return jax.make_array_from_process_local_data(sharding, x, (rows, *x.shape[1:]))
