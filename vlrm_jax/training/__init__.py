"""Generic training machinery: the optimizer, a donated jitted step over split nnx state,
per-step randomness and loss logging without a host sync per step. The shapes world's
pre-training uses it; the RL trainer builds on the same pieces."""
from vlrm_jax.training.fit import fit
from vlrm_jax.training.log import LossLog
from vlrm_jax.training.optimizer import make_optimizer
from vlrm_jax.training.rng import step_key, step_rng
from vlrm_jax.training.state import TrainState, make_train_step, split_trainable

__all__ = ["LossLog", "TrainState", "fit", "make_optimizer", "make_train_step", "split_trainable", "step_key",
           "step_rng"]
