"""The compiled-program counters (vlrm_jax.aot.hlo) on TPU programs whose FLOPs, loops and
collectives are known exactly: XLA's own cost_analysis counts a loop body once."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from vlrm_jax import sharding
from vlrm_jax.aot import hlo

B, K = 32, 256  # 4 chips: 8 rows each
MATMUL = 2 * (B // 4) * K * K  # FLOPs of one (B/4, K) @ (K, K) per chip


def _compiled_text(fn, mesh, *shapes):
    return jax.jit(fn).lower(*shapes).compile().as_text()


def _inputs(mesh, layers):
    x = jax.ShapeDtypeStruct((B, K), jnp.float32, sharding=NamedSharding(mesh, P("data")))
    w = jax.ShapeDtypeStruct((layers, K, K), jnp.float32, sharding=NamedSharding(mesh, P()))
    return x, w


def test_scanned_matmuls_and_a_psum_per_iteration(v5e_2x2):
    mesh = sharding.make_mesh((4, 1, 1), devices=v5e_2x2)

    @functools.partial(jax.shard_map, mesh=mesh, in_specs=(P("data"), P()), out_specs=P("data"))
    def layers(x, w):
        def body(h, wi):
            h = jnp.tanh(h @ wi)
            return h / jax.lax.psum(jnp.sum(h), "data"), None  # one all-reduce per layer

        return jax.lax.scan(body, x, w)[0]

    counts = hlo.count(_compiled_text(layers, mesh, *_inputs(mesh, 7)))
    assert counts.flops == 7 * MATMUL
    assert counts.collectives["all-reduce"]["count"] == 7
    # every layer's weights read once, not the whole stack at every layer
    assert 7 * K * K * 4 <= counts.hbm_bytes < 2 * 7 * K * K * 4


def test_nested_loops_and_a_loop_that_starts_late(v5e_2x2):
    mesh = sharding.make_mesh((4, 1, 1), devices=v5e_2x2)

    def nested(x, w):
        def outer(h, _):
            return jax.lax.scan(lambda g, wi: (jnp.tanh(g @ wi), None), h, w)[0], None

        h = jax.lax.scan(outer, x, None, length=3)[0]  # 3 x 5 matmuls
        return jax.lax.fori_loop(4, 9, lambda i, g: jnp.tanh(g @ w[0]), h)  # 5 more

    counts = hlo.count(_compiled_text(nested, mesh, *_inputs(mesh, 5)))
    assert counts.flops == (3 * 5 + 5) * MATMUL
    assert not counts.collectives  # batch-parallel: nothing crosses chips


def test_xla_cost_analysis_counts_a_loop_once(v5e_2x2):
    """Why the project counts for itself: the compiler's figure for the scan above is one layer's."""
    mesh = sharding.make_mesh((4, 1, 1), devices=v5e_2x2)

    def layers(x, w):
        return jax.lax.scan(lambda h, wi: (jnp.tanh(h @ wi), None), x, w)[0]

    compiled = jax.jit(layers).lower(*_inputs(mesh, 7)).compile()
    ours = hlo.count(compiled.as_text()).flops
    theirs = compiled.cost_analysis()["flops"]
    assert ours == 7 * MATMUL and theirs < 2 * MATMUL


def test_shapes_and_bytes_of_hlo_text():
    assert hlo.arrays("(s32[], bf16[2,3]{1,0:T(8,128)(2,1)S(1)}, f32[4]{0})") == [
        ("s32", ()), ("bf16", (2, 3)), ("f32", (4,))]
    assert hlo.nbytes("bf16[2,3]{1,0:T(8,128)(2,1)S(1)}", on_chip=False) == 0  # held on chip
    assert hlo.nbytes("(bf16[2,3]{1,0}, pred[5]{0})") == 2 * 6 + 5
    assert np.isclose(hlo.nbytes("s4[3]{0}"), 1.5)
