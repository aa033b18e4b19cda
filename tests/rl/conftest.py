"""Tiny stacks for the A2C step tests: a transformers BLIP2 and its Flax conversion, a random
value network, and steps built on them."""
import numpy as np
import pytest
from flax import nnx

from tests import factories as F


def flax_captioner_from_hf(hf):
    """The converter's own table, applied in memory (no folder round trip)."""
    from convert import blip2 as blip2_conv
    from convert.table import expand, torch_to_flax
    from tests.helpers import source_from_state_dict
    from vlrm_jax.models import build
    from vlrm_jax.models.blip2 import Blip2Captioner

    cfg = blip2_conv.config_from_hf_config(hf.config)
    ctor = lambda: Blip2Captioner(cfg, rngs=nnx.Rngs(0))  # noqa: E731
    abstract = build.flat_params(build.abstract(ctor))
    entries = expand(blip2_conv.table(cfg), blip2_conv.layer_sets(cfg))
    params = torch_to_flax(source_from_state_dict(hf.state_dict()), entries, abstract,
                           ignore=blip2_conv.TIED_KEYS, progress=False)
    return build.from_params(ctor, params)


def random_value_network(value_cfg, opt_cfg, seed: int = 1, std: float = 0.2):
    """A value network whose every parameter is random (peft starts b at zero, which would hide
    a wrong gradient of a)."""
    from vlrm_jax.models.value import ValueNetwork

    return _randomise(ValueNetwork(value_cfg, opt_cfg, rngs=nnx.Rngs(seed)), seed, std)


@pytest.fixture(scope="package")
def hf_blip2(tmp_path_factory):
    """transformers BLIP2 with a strong EOS row, so some sampled captions end early."""
    return F.save_tiny_blip2(str(tmp_path_factory.mktemp("rl_blip2")), seed=0, eos_scale=2.0)


VOCAB = 40


def tiny_captioner(seed: int = 0, std: float = 0.2):
    """A pure-JAX BLIP2 of a few thousand parameters, every weight random with a wide spread
    (sharp next-token distributions: sampling has few near-ties)."""
    from vlrm_jax.models.blip2 import Blip2Captioner, Blip2Config
    from vlrm_jax.models.opt import OPTConfig
    from vlrm_jax.models.qformer import QFormerConfig
    from vlrm_jax.models.vit import VisionConfig

    cfg = Blip2Config(
        vision=VisionConfig(hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
                            image_size=14, patch_size=7),
        qformer=QFormerConfig(hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
                              encoder_hidden_size=16, vocab_size=VOCAB, max_position_embeddings=20),
        text=OPTConfig(vocab_size=VOCAB, hidden_size=16, ffn_dim=24, num_hidden_layers=2, num_attention_heads=2,
                       max_position_embeddings=40, word_embed_proj_dim=16),
        num_query_tokens=3, image_token_index=None)
    return _randomise(Blip2Captioner(cfg, rngs=nnx.Rngs(seed)), seed, std)


def tiny_itm(captioner, seed: int = 1, share_trunk: bool = True, std: float = 0.2):
    """BLIP2-ITM over the captioner's ViT shape; with share_trunk its ViT (all but the final
    LayerNorm) holds the captioner's values, as the released checkpoints do."""
    from vlrm_jax.models.itm import Blip2Itm, ItmConfig
    from vlrm_jax.models.qformer import QFormerConfig

    qf = dict(captioner.cfg.qformer.__dict__, use_qformer_text_input=True)
    itm = _randomise(Blip2Itm(ItmConfig(vision=captioner.cfg.vision, qformer=QFormerConfig(**qf), num_query_tokens=3,
                                        image_text_hidden_size=8), rngs=nnx.Rngs(seed)), seed, std)
    if share_trunk:
        source = dict(nnx.to_flat_state(nnx.state(captioner.vision_model, nnx.Param)))
        for path, var in nnx.to_flat_state(nnx.state(itm.vision_model, nnx.Param)):
            if "post_layernorm" not in path:
                var.set_value(np.array(source[path].get_value()))
    return itm


def _randomise(module, seed: int, std: float):
    rng = np.random.default_rng(seed)
    for path, var in nnx.to_flat_state(nnx.state(module, nnx.Param)):
        base = 1.0 if "scale" in path else 0.0
        var.set_value(np.asarray(base + std * rng.normal(size=var.get_value().shape), np.float32))
    return module


def tiny_pixels(batch: int, seed: int = 0):
    return np.random.default_rng(seed).normal(size=(batch, 14, 14, 3)).astype(np.float32)
