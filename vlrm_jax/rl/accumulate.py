"""Gradient sums over micro-batches (a `lax.scan`), with the data-parallel groups' sums kept
apart until the end of the scan when the mesh asks for it (a2c.grad_reduce="step")."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P


def scan_gradients(grad_fn, params, layout, xs, extra, fold, *, mesh=None, groups: int = 1, inside_group=None):
    """Sums over the micro-batches `xs` ((M, R/M, ...) each) of `grad_fn(params, *mb) ->
    ((loss, aux), grads)`; `fold(extra, loss, aux) -> (extra, output per micro-batch)`.

    With grad_reduce="step" on a mesh with a `data` axis, the rows of each `data` index form
    a group: grad_fn is vmapped over the groups (the group axis on `data`), so each group
    adds up its own rows' gradients over all micro-batches (laid out as the parameters are,
    over fsdp and tensor), and the groups' sums meet once, after the scan. Otherwise XLA
    all-reduces each micro-batch's gradient over `data` where it arises (inside the layer
    loop, for the LoRA adapters). The same sums either way, added in another order.
    `inside_group()`: a context entered while tracing one group's rows (the step's layout pins)."""
    g = groups
    if g == 1:
        def body(carry, mb):
            (loss, aux), grads = grad_fn(params, *mb)
            extra, out = fold(carry[1], loss, aux)
            return (jax.tree.map(jnp.add, carry[0], grads), extra), out

        (grads, extra), outs = jax.lax.scan(body, (jax.tree.map(jnp.zeros_like, params), extra), xs)
        return grads, extra, outs
    grouped = jax.vmap(grad_fn, in_axes=(None,) + (0,) * len(xs), spmd_axis_name="data")

    def split(x):  # (M, R/M, ...) -> (M, G, R/M/G, ...): group j is what data index j holds
        y = x.reshape(x.shape[0], g, x.shape[1] // g, *x.shape[2:])
        rows = "fsdp" if "fsdp" in mesh.shape else None
        return jax.lax.with_sharding_constraint(y, NamedSharding(mesh, P(None, "data", rows)))

    def merge(x):  # a group's per-row output back into rows; its scalars summed
        return jnp.sum(x, axis=0) if x.ndim == 1 else x.reshape(-1, *x.shape[2:])

    def body(carry, mb):
        with inside_group():
            (loss, aux), grads = grouped(params, *mb)
        extra, out = fold(carry[1], jnp.sum(loss), jax.tree.map(merge, aux))
        return (jax.tree.map(jnp.add, carry[0], grads), extra), out

    def zeros(p, where):
        return jax.lax.with_sharding_constraint(jnp.zeros((g, *p.shape), p.dtype),
                                                NamedSharding(mesh, P("data", *where.spec)))

    start = (jax.tree.map(zeros, params, layout), extra)
    (grads, extra), outs = jax.lax.scan(body, start, jax.tree.map(split, xs))
    return jax.tree.map(lambda x: jnp.sum(x, axis=0), grads), extra, outs

