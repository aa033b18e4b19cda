"""The generic training pieces: a fit that learns, only the trainable part moves, losses logged
in blocks, and per-step randomness that does not depend on what ran before."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from vlrm_jax.metrics import ScalarLog
from vlrm_jax.world.pretrain.supervised import LossLog, fit, step_key, step_rng


class _Two(nnx.Module):
    def __init__(self):
        self.a = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
        self.b = nnx.Linear(3, 1, rngs=nnx.Rngs(1))


def _opt(steps_lr=0.1):
    return ml_collections.ConfigDict(dict(learning_rate=steps_lr, warmup_steps=2, end_lr_fraction=0.1, b1=0.9,
                                          b2=0.999, weight_decay=0.0, grad_clip_norm=1.0))


def test_fit_lowers_the_loss_and_trains_only_the_trainable_part(tmp_path):
    model = _Two()
    frozen_before = np.asarray(model.b.kernel[...]).copy()
    x = np.random.default_rng(0).normal(size=(32, 3)).astype(np.float32)
    y = x @ np.array([[1.0], [-2.0], [0.5]], np.float32)

    def loss_fn(m, batch):
        return jnp.mean((m.a(batch["x"]) + m.b(batch["x"]) - batch["y"]) ** 2)

    trainable = nnx.All(nnx.Param, lambda path, _: path[0] == "a")
    with ScalarLog(tmp_path / "tb") as log:
        losses = fit(model, loss_fn, lambda step: {"x": x, "y": y}, 60, _opt(), "test", log, trainable, log_every=7)
    assert losses.shape == (60,) and losses[-1] < 0.5 * losses[0]
    np.testing.assert_array_equal(np.asarray(model.b.kernel[...]), frozen_before)


def test_loss_log_fetches_in_blocks(tmp_path):
    with ScalarLog(tmp_path / "tb") as log:
        losses = LossLog(log, every=3)
        blocks = [losses.add(jnp.float32(i)) for i in range(7)]
        assert [b is not None for b in blocks] == [False, False, True, False, False, True, False]
        assert losses.flush() == [6.0] and losses.flush() is None
    np.testing.assert_array_equal(losses.array(), np.arange(7, dtype=np.float32))


def test_per_step_randomness_is_a_function_of_seed_and_step():
    assert step_rng(3, 5).integers(10 ** 9) == step_rng(3, 5).integers(10 ** 9)
    assert step_rng(3, 5).integers(10 ** 9) != step_rng(3, 6).integers(10 ** 9)
    key = jax.random.key(0)
    assert bool(jnp.all(jax.random.key_data(step_key(key, 4)) == jax.random.key_data(jax.random.fold_in(key, 4))))
