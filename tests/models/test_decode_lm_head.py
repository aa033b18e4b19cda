"""A decode step's lm_head (`OPTForCausalLM.decode_lm_head`): on a CPU, at most
CPU_TABLE_FIRST_HEAD_ROWS rows take the product table-first, with lm_head's values; more rows, and
other platforms (tests/aot/test_lowering.py), take lm_head itself."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vlrm_jax.models import opt

V, E = 97, 24


def _model():
    cfg = opt.OPTConfig(vocab_size=V, hidden_size=E, ffn_dim=32, num_hidden_layers=1, num_attention_heads=2,
                        max_position_embeddings=16, word_embed_proj_dim=E)
    return opt.OPTForCausalLM(cfg, rngs=nnx.Rngs(0))


def _hidden(shape):
    return jnp.asarray(np.random.default_rng(1).normal(size=shape + (E,)), jnp.float32)


def _table_first_products(model, hidden) -> list[str]:
    """The compiled CPU program's products whose output is (V, rows): the table-first form."""
    text = jax.jit(model.decode_lm_head).lower(hidden).compile().as_text()
    rows = int(np.prod(hidden.shape[:-1]))
    return re.findall(rf"f32\[{V},{rows}\]\S* dot\(", text)


@pytest.mark.parametrize("shape", [(1,), (4,), (16,), (4, 4), (17,), (4, 5)])
def test_a_decode_step_gets_the_lm_heads_logits(shape):
    model, hidden = _model(), _hidden(shape)
    got = jax.jit(model.decode_lm_head)(hidden)
    assert got.shape == shape + (V,) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, jax.jit(model.lm_head)(hidden), rtol=0, atol=1e-5)


def test_up_to_the_limit_the_cpu_product_is_table_first():
    model = _model()
    assert opt.CPU_TABLE_FIRST_HEAD_ROWS == 16
    assert _table_first_products(model, _hidden((16,)))
    assert _table_first_products(model, _hidden((4, 4)))
    assert not _table_first_products(model, _hidden((17,)))
