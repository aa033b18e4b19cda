"""Building blocks shared by every model: dense layers with logical axis names, layer norm,
masked attention, and stacks of identical layers that run under `lax.scan`.

Parameters carry their logical axis names as the metadata key `logical_axes` (see
`vlrm_jax.sharding`, which maps them onto a device mesh). A stacked layer gets one more leading
axis, named `layers`.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array
LAYERS_AXIS = "layers"

DTYPES = {
    "float32": jnp.float32,
    "bfloat16": jnp.bfloat16,
    "float16": jnp.float16,
}


def to_dtype(name: str | Any):
    """Config files spell dtypes as strings; modules want jnp dtypes."""
    if not isinstance(name, str):
        return name
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(DTYPES)}")
    return DTYPES[name]


def activation(name: str) -> Callable[[Array], Array]:
    """transformers' ACT2FN names used by BLIP2, OPT and OpenCLIP."""
    table = {
        "gelu": lambda x: jax.nn.gelu(x, approximate=False),
        "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
        "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
        "relu": jax.nn.relu,
        "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    }
    if name not in table:
        raise ValueError(f"unsupported activation {name!r}; expected one of {sorted(table)}")
    return table[name]


def dense(
    in_features: int,
    out_features: int,
    axes: tuple[str, str],
    *,
    rngs: nnx.Rngs,
    use_bias: bool = True,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    init_std: float = 0.02,
) -> nnx.Linear:
    return nnx.Linear(
        in_features,
        out_features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=nnx.initializers.normal(init_std),
        kernel_metadata={"logical_axes": axes},
        bias_metadata={"logical_axes": (axes[1],)},
        precision=None,
        rngs=rngs,
    )


def layer_norm(
    dim: int, eps: float, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32
) -> nnx.LayerNorm:
    return nnx.LayerNorm(
        dim,
        epsilon=eps,
        dtype=dtype,
        param_dtype=param_dtype,
        scale_metadata={"logical_axes": ("norm",)},
        bias_metadata={"logical_axes": ("norm",)},
        rngs=rngs,
    )


def embedding(
    num: int, dim: int, axes: tuple[str, str], *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32
) -> nnx.Embed:
    return nnx.Embed(
        num,
        dim,
        dtype=dtype,
        param_dtype=param_dtype,
        embedding_init=nnx.initializers.normal(0.02),
        embedding_metadata={"logical_axes": axes},
        rngs=rngs,
    )


def param(rngs: nnx.Rngs, shape: Sequence[int], axes: tuple, dtype=jnp.float32, std: float = 0.02) -> nnx.Param:
    value = std * jax.random.normal(rngs.params(), tuple(shape), dtype)
    return nnx.Param(value, logical_axes=axes)


# Scores (batch chunk x heads x Tq x Tk, fp32) of about this many bytes per step of the CPU's
# chunked attention: one fused attention over a whole ViT batch ran 3-5x slower than the same
# attention mapped over batch chunks whose scores stay in cache (2-core AMD EPYC, 257 tokens, 4,
# 6 and 16 heads, B=64: best at 2 images for 4 and 6 heads, 1 for 16); see docs/generation.md.
CPU_CHUNK_SCORE_BYTES = 3_500_000


def attention(q: Array, k: Array, v: Array, mask: Array | None, scale: float, heads_first_kv: bool = False) -> Array:
    """Softmax attention with heads: q (B, Tq, H, D), k/v (B, Tk, H, D) or, with heads_first_kv,
    k (B, H, D, Tk) and v (B, H, Tk, D) (a KV cache kept in the layout the score and output
    products read without a transpose), mask broadcastable to (B, H, Tq, Tk), True where
    attending is allowed.

    Masked scores take the dtype's most negative finite value, as transformers does, so a row with
    no allowed key (a left-padding position) gives finite values instead of NaN; such rows never
    feed a valid position. Scores and softmax run in fp32 whatever the compute dtype.

    On a CPU, a batch whose scores exceed CPU_CHUNK_SCORE_BYTES is mapped over chunks of rows
    (each row's values are the same either way); other platforms run one fused attention. The
    choice is made when the program is lowered (`lax.platform_dependent`), so a TPU program
    compiled ahead of time on a CPU host gets the fused form.
    """
    b, tq, heads = q.shape[0], q.shape[1], q.shape[2]
    tk = k.shape[-1] if heads_first_kv else k.shape[1]
    rows = cpu_chunk_rows(b, heads * tq * tk * 4)
    if rows == b:
        return _attention(q, k, v, mask, scale, heads_first_kv)
    per_row_mask = mask is not None and mask.shape[0] == b
    extra = (mask,) if per_row_mask else ()  # a mask per row is split with the rows

    def fused(q, k, v, *m):
        return _attention(q, k, v, m[0] if m else mask, scale, heads_first_kv)

    def chunked(*args):
        split = tuple(x.reshape(b // rows, rows, *x.shape[1:]) for x in args)
        out = jax.lax.map(lambda a: fused(*a), split)
        return out.reshape(b, *out.shape[2:])

    return jax.lax.platform_dependent(q, k, v, *extra, cpu=chunked, default=fused)


def cpu_chunk_rows(batch: int, score_bytes_per_row: int) -> int:
    """Rows per step of the CPU's chunked attention: the largest divisor of `batch` whose scores
    fit CPU_CHUNK_SCORE_BYTES, at least 1 (`batch` itself: no chunking)."""
    fit = max(1, CPU_CHUNK_SCORE_BYTES // max(score_bytes_per_row, 1))
    return max(d for d in range(1, min(fit, batch) + 1) if batch % d == 0)


def _attention(q: Array, k: Array, v: Array, mask: Array | None, scale: float, heads_first_kv: bool) -> Array:
    """`attention` in one piece."""
    keys = "bhdk" if heads_first_kv else "bkhd"
    scores = jnp.einsum(f"bqhd,{keys}->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    if mask is not None:
        scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    if heads_first_kv:
        # a batched (q, k) @ (k, d) product, then the small output transposed: asked for bqhd
        # directly, XLA's CPU backend contracts the values as a transposed operand, twice as slow
        # (measured on a beam-search cache; the same values)
        return jnp.einsum("bhqk,bhkd->bhqd", weights, v).transpose(0, 2, 1, 3)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


def split_heads(x: Array, num_heads: int) -> Array:
    return x.reshape(*x.shape[:-1], num_heads, x.shape[-1] // num_heads)


def merge_heads(x: Array) -> Array:
    return x.reshape(*x.shape[:-2], x.shape[-2] * x.shape[-1])


def make_stack(factory: Callable[[nnx.Rngs], nnx.Module], num: int, rngs: nnx.Rngs) -> nnx.Module:
    """`num` copies of a layer whose parameters are stacked on a leading axis (for `scan_stack`)."""

    @nnx.split_rngs(splits=num)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def create(layer_rngs):
        return factory(layer_rngs)

    return create(rngs)


def scan_stack(stack: nnx.Module, body: Callable, carry: Any, xs: Any = None, remat: bool = False) -> tuple[Any, Any]:
    """Run `body(layer, carry, x) -> (carry, y)` over the stacked layers with `lax.scan`.

    One compiled layer body however deep the model is: compile time stays flat from 3 layers
    to 39. `xs` and the returned ys carry a leading layer axis (one slice per layer). With
    `remat` a layer's activations are recomputed in the backward pass (only each layer's input
    is kept): the RL update differentiates through the frozen OPT at rollout batch sizes.
    """
    graphdef, state = nnx.split(stack)

    def step(c, inputs):
        layer_state, x = inputs
        return body(nnx.merge(graphdef, layer_state), c, x)

    if remat:
        step = jax.checkpoint(step, prevent_cse=False)
    return jax.lax.scan(step, carry, (state, xs))


def unstack(stack: nnx.Module) -> list[nnx.Module]:
    """The layers of a `make_stack` stack as separate modules (static slices of the stacked
    parameters), for code that must unroll the layers, e.g. to give each its own buffer."""
    graphdef, state = nnx.split(stack)
    num = jax.tree.leaves(state)[0].shape[0]
    return [nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], state)) for i in range(num)]
