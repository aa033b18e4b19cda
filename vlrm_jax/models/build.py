"""Create models without allocating them (shapes first), and fill them from flat parameter dicts."""
from __future__ import annotations

from typing import Callable

import jax
from flax import nnx


def abstract(ctor: Callable[[], nnx.Module]) -> nnx.Module:
    """The module with ShapeDtypeStructs in place of arrays: no memory, no init compute."""
    return nnx.eval_shape(ctor)


def flat_params(model: nnx.Module) -> dict[tuple, jax.Array]:
    """{path: array} of every nnx.Param (paths as nnx gives them: str attributes, int list indices)."""
    return {path: var.get_value() for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def logical_axes(model: nnx.Module) -> dict[tuple, tuple]:
    """{path: logical axis names} with the stacked-layer axis named `layers`."""
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        axes = tuple(var.get_metadata().get("logical_axes") or ())
        ndim = len(var.get_value().shape)
        if len(axes) == ndim - 1:
            axes = ("layers",) + axes
        out[path] = axes if len(axes) == ndim else (None,) * ndim
    return out


def from_params(ctor: Callable[[], nnx.Module], params: dict[tuple, jax.Array]) -> nnx.Module:
    """Build the module's structure abstractly, then place `params` into it (cast to each
    parameter's dtype). Every parameter must be given."""
    model = abstract(ctor)
    graphdef, state, rest = nnx.split(model, nnx.Param, ...)
    flat = nnx.to_flat_state(state)
    for path, var in flat:
        if path not in params:
            raise KeyError(f"parameter {'.'.join(map(str, path))} not given")
        want = var.get_value()
        value = params[path]
        if tuple(value.shape) != tuple(want.shape):
            raise ValueError(
                f"parameter {'.'.join(map(str, path))}: shape {tuple(value.shape)} != {tuple(want.shape)}"
            )
        var.set_value(jax.numpy.asarray(value, dtype=want.dtype))
    return nnx.merge(graphdef, nnx.from_flat_state(flat), rest)
