"""The shapes world's supervised pre-training machinery: the optimizer, a donated jitted step
over split nnx state, per-step randomness and loss logging without a host sync per step. The RL
trainer (vlrm_jax/rl/) has its own state and step."""
from vlrm_jax.world.pretrain.supervised.fit import fit
from vlrm_jax.world.pretrain.supervised.log import LossLog
from vlrm_jax.world.pretrain.supervised.optimizer import make_optimizer
from vlrm_jax.world.pretrain.supervised.rng import step_key, step_rng
from vlrm_jax.world.pretrain.supervised.state import TrainState, make_train_step, split_trainable

__all__ = ["LossLog", "TrainState", "fit", "make_optimizer", "make_train_step", "split_trainable", "step_key",
           "step_rng"]
