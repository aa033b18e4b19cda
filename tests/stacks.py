"""Tiny pure-JAX model stacks (captioner, ITM, OPT) and the world's tokenizers, for the tests that
run the library's own modules without a PyTorch reference (rewards, the RL step).

Every weight is drawn with a wide spread (`randomise`), so next-token distributions are sharp and
sampled or greedy tokens have few near-ties.
"""
from __future__ import annotations

import numpy as np
from flax import nnx

VOCAB = 40


def randomise(module, seed: int, std: float = 0.2):
    """Every parameter random: normal(0, std), LayerNorm scales around 1."""
    rng = np.random.default_rng(seed)
    for path, var in nnx.to_flat_state(nnx.state(module, nnx.Param)):
        base = 1.0 if "scale" in path else 0.0
        var.set_value(np.asarray(base + std * rng.normal(size=var.get_value().shape), np.float32))
    return module


def vision_config(image_size: int = 14, patch_size: int = 7, width: int = 16, layers: int = 1):
    from vlrm_jax.models.vit import VisionConfig

    return VisionConfig(hidden_size=width, intermediate_size=24, num_hidden_layers=layers, num_attention_heads=2,
                        image_size=image_size, patch_size=patch_size)


def opt_config(vocab: int = VOCAB, width: int = 16, layers: int = 2, max_positions: int = 40):
    from vlrm_jax.models.opt import OPTConfig

    return OPTConfig(vocab_size=vocab, hidden_size=width, ffn_dim=24, num_hidden_layers=layers, num_attention_heads=2,
                     max_position_embeddings=max_positions, word_embed_proj_dim=width)


def qformer_config(vocab: int, encoder_width: int, text_input: bool = False, max_positions: int = 20):
    from vlrm_jax.models.qformer import QFormerConfig

    return QFormerConfig(hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
                         encoder_hidden_size=encoder_width, vocab_size=vocab, max_position_embeddings=max_positions,
                         use_qformer_text_input=text_input)


def tiny_opt(vocab: int = VOCAB, seed: int = 2, std: float = 0.2, max_positions: int = 40):
    from vlrm_jax.models.opt import OPTForCausalLM

    return randomise(OPTForCausalLM(opt_config(vocab, max_positions=max_positions), rngs=nnx.Rngs(seed)), seed, std)


def tiny_captioner(vocab: int = VOCAB, seed: int = 0, std: float = 0.2, **vision):
    from vlrm_jax.models.blip2 import Blip2Captioner, Blip2Config

    v = vision_config(**vision)
    cfg = Blip2Config(vision=v, qformer=qformer_config(vocab, v.hidden_size), text=opt_config(vocab),
                      num_query_tokens=3, image_token_index=None)
    return randomise(Blip2Captioner(cfg, rngs=nnx.Rngs(seed)), seed, std)


def tiny_itm(vocab: int = VOCAB, seed: int = 1, std: float = 0.2, trunk_of=None, max_positions: int = 20, **vision):
    """BLIP2-ITM; `trunk_of` (a captioner) gives its ViT that captioner's shape and trunk values
    (all but the final LayerNorm), as the released checkpoints share them."""
    from vlrm_jax.models.itm import Blip2Itm, ItmConfig

    v = trunk_of.cfg.vision if trunk_of is not None else vision_config(**vision)
    qformer = qformer_config(vocab, v.hidden_size, text_input=True, max_positions=max_positions)
    cfg = ItmConfig(vision=v, qformer=qformer, num_query_tokens=3, image_text_hidden_size=8)
    itm = randomise(Blip2Itm(cfg, rngs=nnx.Rngs(seed)), seed, std)
    if trunk_of is not None:
        source = dict(nnx.to_flat_state(nnx.state(trunk_of.vision_model, nnx.Param)))
        for path, var in nnx.to_flat_state(nnx.state(itm.vision_model, nnx.Param)):
            if "post_layernorm" not in path:
                var.set_value(np.array(source[path].get_value()))
    return itm


def tiny_pixels(batch: int, seed: int = 0, size: int = 14):
    return np.random.default_rng(seed).normal(size=(batch, size, size, 3)).astype(np.float32)


def world_tokenizers(folder):
    """(captioner tokenizer, ITM tokenizer) of a small shapes world: byte-level BPE like OPT's and
    WordPiece like BERT's, built offline in about a second."""
    from transformers import AutoTokenizer

    from vlrm_jax.world.shapes import generate_world
    from vlrm_jax.world.tokenizers import build_tokenizers

    paths = build_tokenizers(generate_world(0, 30, 5, image_size=16), folder)
    return AutoTokenizer.from_pretrained(str(paths["captioner"])), AutoTokenizer.from_pretrained(str(paths["itm"]))
