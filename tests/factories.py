"""Tiny random transformers / PyTorch models for parity tests.

Odd sizes on purpose (3 or 5 heads, 3 layers, patch 7, 5 query tokens) and every parameter
randomised, LayerNorm weights and biases and the query tokens included: transformers initialises
those to constants, which would hide a dropped bias or a query-order bug. initializer_range 0.2
keeps greedy and beam decoding free of near-ties.
"""
from __future__ import annotations

import numpy as np

from vlrm_jax.testing.tiny import VOCAB, save_tiny_tokenizer

IMAGE_TOKEN = VOCAB - 1


def _transformers_norm_scale(name: str) -> bool:
    return "norm" in name.lower() and name.endswith("weight")


def randomise(model, seed: int = 0, std: float = 0.2, is_norm_scale=_transformers_norm_scale):
    """Every parameter of a torch model normal(0, std), the LayerNorm scales (`is_norm_scale` of
    the parameter's name) around 1 but distinct."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * std
            p.copy_(1.0 + noise if is_norm_scale(name) else noise)
    return model.eval()


def tiny_opt_config(**overrides):
    from transformers import OPTConfig

    kw = dict(vocab_size=VOCAB, hidden_size=30, ffn_dim=37, num_hidden_layers=3, num_attention_heads=3,
              max_position_embeddings=80, word_embed_proj_dim=30, pad_token_id=1, bos_token_id=2,
              eos_token_id=2, init_std=0.2, dropout=0.0, attention_dropout=0.0)
    kw.update(overrides)
    return OPTConfig(**kw)


def tiny_blip2_config(**text_overrides):
    from transformers import Blip2Config, Blip2QFormerConfig, Blip2VisionConfig

    vision = Blip2VisionConfig(hidden_size=30, intermediate_size=41, num_hidden_layers=3, num_attention_heads=3,
                               image_size=28, patch_size=7, initializer_range=0.2)
    qformer = Blip2QFormerConfig(hidden_size=20, intermediate_size=27, num_hidden_layers=3, num_attention_heads=5,
                                 encoder_hidden_size=30, cross_attention_frequency=2, initializer_range=0.2,
                                 vocab_size=VOCAB, max_position_embeddings=40)
    text = tiny_opt_config(**text_overrides)
    return Blip2Config(vision_config=vision.to_dict(), qformer_config=qformer.to_dict(), text_config=text.to_dict(),
                       num_query_tokens=5, image_token_index=IMAGE_TOKEN, initializer_range=0.2)


def save_tiny_blip2(path: str, seed: int = 0, eos_scale: float = 1.0, **text_overrides):
    """eos_scale > 1 enlarges EOS's (tied) embedding row so that some captions end early."""
    import torch
    from transformers import Blip2ForConditionalGeneration

    model = randomise(Blip2ForConditionalGeneration(tiny_blip2_config(**text_overrides)), seed)
    with torch.no_grad():
        emb = model.language_model.get_input_embeddings().weight
        emb[model.config.text_config.eos_token_id] *= eos_scale
    model.save_pretrained(path)
    save_tiny_tokenizer(path)
    return model


def save_tiny_opt(path: str, seed: int = 0, **overrides):
    from transformers import OPTForCausalLM

    model = randomise(OPTForCausalLM(tiny_opt_config(**overrides)), seed)
    model.save_pretrained(path)
    return model


def random_pixels(batch: int, size: int = 28, seed: int = 0) -> np.ndarray:
    """Channels-last float32 (B, H, W, 3), already 'normalised'."""
    return np.random.default_rng(seed).normal(size=(batch, size, size, 3)).astype(np.float32)


def left_padded_ids(batch: int, length: int, seed: int = 0, bos: int = 2, pad: int = 1):
    """Random text ids starting with BOS, rows left-padded to different lengths."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(4, VOCAB - 1, size=(batch, length))
    mask = np.ones((batch, length), np.int64)
    for b in range(batch):
        n_pad = (b * 2) % (length - 2)
        ids[b, :n_pad] = pad
        mask[b, :n_pad] = 0
        ids[b, n_pad] = bos
    return ids, mask


def tiny_itm_config():
    from transformers import Blip2Config

    base = tiny_blip2_config()
    qformer = dict(base.qformer_config.to_dict(), use_qformer_text_input=True)
    return Blip2Config(vision_config=base.vision_config.to_dict(), qformer_config=qformer,
                       num_query_tokens=5, image_text_hidden_size=12, image_token_index=None,
                       initializer_range=0.2, architectures=["Blip2ForImageTextRetrieval"])


def save_tiny_itm(path: str, seed: int = 0):
    from transformers import Blip2ForImageTextRetrieval

    model = randomise(Blip2ForImageTextRetrieval(tiny_itm_config()), seed)
    model.save_pretrained(path)
    return model


def right_padded_ids(batch: int, length: int, seed: int = 0, cls: int = 2, sep: int = 3, pad: int = 0):
    """BERT-style [CLS] text [SEP] then right padding, rows of different lengths."""
    rng = np.random.default_rng(seed)
    ids = np.full((batch, length), pad, np.int64)
    mask = np.zeros((batch, length), np.int64)
    for b in range(batch):
        n = length - (b % (length - 3))
        ids[b, :n] = rng.integers(5, VOCAB, size=n)
        ids[b, 0], ids[b, n - 1] = cls, sep
        mask[b, :n] = 1
    return ids, mask
