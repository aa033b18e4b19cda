"""The tiny VLRM step that tests/rl/test_step.py and tests/rl/test_mesh.py both drive: a pure-JAX
captioner, an ITM sharing its ViT trunk, the captioner's own OPT as the reference LM."""
import jax
import numpy as np
from flax import nnx

from tests.stacks import tiny_captioner, tiny_itm
from vlrm_jax.generate.config import GenerationConfig
from vlrm_jax.models.value import ValueConfig, ValueNetwork
from vlrm_jax.rl.config import A2CConfig
from vlrm_jax.rl.step import A2CStep

ROLLOUT = GenerationConfig.paper_rollout(max_new_tokens=8)
VALUE = ValueConfig(lora_rank=2, head_layers=1, head_mlp_ratio=2)
EOS = 2
VLRM_A2C = A2CConfig(micro_batches=2, learning_rate=1e-3, warmup_steps=2)


def value_net(captioner, seed=1):
    return ValueNetwork(VALUE, captioner.cfg.text, rngs=nnx.Rngs(seed))


def snapshot(tree):
    return jax.tree.map(lambda x: np.array(x), tree)


def vlrm_step(scorer, mesh, cfg=VLRM_A2C) -> A2CStep:
    """The step with its ITM module kept as `step.itm_module` (the mesh places it in place)."""
    captioner = tiny_captioner()
    itm = tiny_itm(trunk_of=captioner)
    step = A2CStep(cfg, captioner, value_net(captioner), scorer, ROLLOUT, itm=itm,
                   ref_lm=nnx.clone(captioner.language_model), mesh=mesh)
    step.itm_module = itm
    return step
