"""The whole VLRM step (rollout, ITM + reference-LM reward with host retokenisation, value and
policy passes in 2 micro-batches) on (data, fsdp, tensor) meshes of 8 fake CPU devices: four mesh
shapes give the updates of one device, step after step, every parameter and Adam moment lies as
the logical rules say, and a checkpoint saved on one mesh restores onto another shape and device
count and goes on identically."""
import jax
import numpy as np
import pytest
from flax import nnx

from tests.rl.tiny_steps import snapshot, vlrm_step
from tests.stacks import tiny_pixels
from vlrm_jax import sharding
from vlrm_jax.models import build
from vlrm_jax.rl.checkpoint import Checkpoints

# (data, fsdp, tensor): the default data-parallel mesh, then splits over fsdp and tensor (tensor 4
# does not divide 2 heads)
SHAPES = ((8, 1, 1), (2, 2, 2), pytest.param((1, 4, 2), marks=pytest.mark.slow),
          pytest.param((2, 1, 4), marks=pytest.mark.slow))  # every axis split already in 2x2x2
PIXELS = tiny_pixels(16)


def _mesh(shape, devices=None):
    return sharding.make_mesh(shape, devices=jax.devices()[:int(np.prod(shape))] if devices is None else devices)


@pytest.fixture(scope="module")
def run(vlrm_scorer):
    """run(shape or None) -> (step, state after 2 updates, their metrics); each mesh compiles once."""
    done = {}

    def get(shape):
        if shape not in done:
            step = vlrm_step(vlrm_scorer, None if shape is None else _mesh(shape))
            state = step.init_state(0)
            batch = step.shard_batch({"pixels": PIXELS})
            history = []
            for _ in range(2):
                state, metrics, _ = step.step(state, step.frozen, batch)
                history.append(jax.tree.map(float, metrics))
            done[shape] = step, state, history
        return done[shape]

    return get


def _assert_same(a, b, history_a=None, history_b=None):
    for x, y in zip(jax.tree.leaves(snapshot(a)), jax.tree.leaves(snapshot(b))):
        np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-6)
    for m1, m2 in zip(history_a or [], history_b or []):
        for name in m1:
            np.testing.assert_allclose(m2[name], m1[name], rtol=1e-4, atol=1e-5, err_msg=name)


def _expected_specs(module, mesh, rules=sharding.DEFAULT_RULES) -> dict:
    shapes = {path: var.get_value().shape for path, var in nnx.to_flat_state(nnx.state(module, nnx.Param))}
    return {path: sharding.spec_for(axes, mesh, rules, shapes[path]) for path, axes in build.logical_axes(module).items()}


@pytest.mark.parametrize("shape", SHAPES, ids=["8x1x1", "2x2x2", "1x4x2", "2x1x4"])
def test_mesh_shape_gives_the_single_device_update_with_parameters_laid_out_by_the_rules(run, shape):
    _, single, single_history = run(None)
    step, state, history = run(shape)
    mesh = step.mesh
    _assert_same((single.policy, single.value), (state.policy, state.value), single_history, history)
    assert step.vision_shared and step.ref_shared
    assert history[0]["reward/bad"] >= 0 and history[0]["reward/ref"] < 0 and history[0]["update_ok"] == 1.0

    # every parameter of every model on the mesh where the rules put it; some really split
    split = {"fsdp": 0, "tensor": 0}
    captioner = step.policy_module(state)
    for module in (captioner, step.itm_module):
        for path, var in nnx.to_flat_state(nnx.state(module, nnx.Param)):
            expected = _expected_specs(module, mesh)[path]
            got = var.get_value().sharding
            assert got.is_equivalent_to(jax.sharding.NamedSharding(mesh, expected), var.get_value().ndim), \
                (path, got.spec, expected)
            for axis in split:
                split[axis] += any(axis == e or (isinstance(e, tuple) and axis in e) for e in expected)
    # trainable parameters and both Adam moments of the state follow the same rules
    specs = _expected_specs(captioner, mesh)
    params = dict(nnx.to_flat_state(state.policy))
    for path, var in params.items():
        assert var.get_value().sharding.is_equivalent_to(jax.sharding.NamedSharding(mesh, specs[path]), len(specs[path]))
    moments = [s for s in jax.tree.leaves(state.policy_opt, is_leaf=lambda x: hasattr(x, "mu")) if hasattr(s, "mu")]
    assert moments
    for adam in moments:
        for tree in (adam.mu, adam.nu):
            for moment, param in zip(jax.tree.leaves(tree), jax.tree.leaves(state.policy)):
                assert moment.shape == param.shape and moment.sharding.is_equivalent_to(param.sharding, param.ndim)
    if shape[1] > 1:
        assert split["fsdp"] > 0, "no parameter split over fsdp"
    if shape[2] > 1:
        assert split["tensor"] > 0, "no parameter split over tensor"


def test_spec_for_replicates_what_does_not_divide_and_never_reuses_an_axis():
    P = jax.sharding.PartitionSpec
    mesh = _mesh((2, 2, 2), devices=jax.devices()[:8])
    assert sharding.spec_for(("heads", "embed"), mesh, shape=(3, 16)) == P(None, "fsdp")  # 3 heads: not over 2
    assert sharding.spec_for(("vocab", "mlp"), mesh, shape=(40, 24)) == P("tensor", None)  # tensor taken once
    assert sharding.spec_for(("embed", "qformer_embed"), mesh, shape=(16, 16)) == P("fsdp", None)
    assert sharding.spec_for(("batch", "length"), mesh, shape=(8, 5)) == P(("data", "fsdp"), None)
    assert sharding.spec_for(("batch", "length"), mesh, shape=(6, 5)) == P(None, None)  # 6 rows over 4 devices
    # a rule listed twice: the first that applies wins, the next is the fallback
    rules = (("mlp", "data"), ("mlp", "tensor"))
    assert sharding.spec_for(("mlp",), mesh, rules, shape=(24,)) == P("data")
    assert sharding.spec_for(("batch", "mlp"), mesh, (("batch", "data"),) + rules, shape=(8, 24)) == P("data", "tensor")
    with pytest.raises(ValueError, match="unknown logical axis 'heads_x'"):
        sharding.check_rules((("heads_x", "tensor"),))
    with pytest.raises(ValueError, match="unknown mesh axis 'pipe'"):
        sharding.check_rules((("heads", "pipe"),))
    assert sharding.mesh_shape({"data": -1, "fsdp": 2, "tensor": 2}, 8) == (2, 2, 2)
    with pytest.raises(ValueError, match="do not split"):
        sharding.mesh_shape({"data": -1, "fsdp": 3, "tensor": 1}, 8)


def test_checkpoint_restores_onto_another_mesh_shape_and_device_count(run, vlrm_scorer, tmp_path):
    """Saved on 8 devices (2, 2, 2), restored onto 4 other devices (1, 2, 2) and onto one device:
    the state is equal, laid out as the new step's template, and the next step matches the step
    the original mesh takes."""
    step8, state8, _ = run((2, 2, 2))
    ckpt = Checkpoints(tmp_path / "checkpoints")
    ckpt.save(2, state8, {"step": 2})
    ckpt.wait()
    batch8 = step8.shard_batch({"pixels": PIXELS})
    after8, metrics8, _ = step8.step(jax.tree.map(lambda x: x.copy(), state8), step8.frozen, batch8)

    for step in (vlrm_step(vlrm_scorer, _mesh((1, 2, 2), devices=jax.devices()[4:])), run(None)[0]):
        template = step.init_state(123)
        restored, record = ckpt.restore(template)
        assert record == {"step": 2}
        _assert_same(state8, restored)
        for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(template)):
            assert got.sharding.is_equivalent_to(want.sharding, got.ndim)
        after, metrics, _ = step.step(restored, step.frozen, step.shard_batch({"pixels": PIXELS}))
        _assert_same(after8, after, [jax.tree.map(float, metrics8)], [jax.tree.map(float, metrics)])
    ckpt.close()
