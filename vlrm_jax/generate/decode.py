"""Prefill and single-token steps of the captioner's OPT over a KV cache.

Slots 0..P-1 of the cache hold the prompt (P = num_query_tokens + 1: the image soft prompt then
BOS, as transformers' BLIP2 generate builds it); the k-th new token is fed at slot P + k. The
prompt has no padding, so a token's position id is its slot.

A decode loop takes `unrolled_layers(model)` once, before the loop, and passes them to every
`step`: XLA does not hoist slices of the stacked layer weights out of a while loop, so slicing
inside it copied all of the OPT's weights every step (about 40 % of a sampling step on CPU).
"""
from __future__ import annotations

import jax.numpy as jnp

from vlrm_jax.models import common
from vlrm_jax.models.blip2 import Blip2Captioner
from vlrm_jax.models.opt import KVCache


def prompt_length(model: Blip2Captioner) -> int:
    return model.cfg.num_query_tokens + 1


def prompt_ids(model: Blip2Captioner, batch: int) -> jnp.ndarray:
    """The ids transformers puts in front of the generated tokens: image placeholders then BOS.
    They take part in no_repeat_ngram bookkeeping exactly as in transformers."""
    cfg = model.cfg
    image_token = cfg.image_token_index if cfg.image_token_index is not None else cfg.text.pad_token_id
    row = [image_token] * cfg.num_query_tokens + [cfg.text.bos_token_id]
    return jnp.broadcast_to(jnp.asarray(row, jnp.int32), (batch, len(row)))


def unrolled_layers(model: Blip2Captioner) -> list:
    """The OPT's layers as separate modules (their weights sliced out of the stack once)."""
    return common.unstack(model.language_model.layers)


def prefill(model: Blip2Captioner, soft_prompt, max_new_tokens: int, layers: list | None = None):
    """soft_prompt (B, Q, E) -> (fp32 logits of the first new token (B, V), cache with room for
    max_new_tokens more)."""
    lm = model.language_model
    b = soft_prompt.shape[0]
    bos = lm.embed(jnp.full((b, 1), model.cfg.text.bos_token_id, jnp.int32))
    embeds = jnp.concatenate([soft_prompt.astype(bos.dtype), bos], axis=1)
    p = embeds.shape[1]
    total = p + max_new_tokens
    cache = KVCache.zeros(lm.cfg, b, total)
    slots = jnp.arange(total)
    mask = (slots[None, :] <= jnp.arange(p)[:, None])[None, None]  # (1, 1, P, S)
    positions = jnp.broadcast_to(jnp.arange(p), (b, p))
    hidden, cache = lm.decode(embeds, positions, mask, cache, 0, layers=layers)
    return lm.lm_head(hidden[:, -1]), cache


def step(model: Blip2Captioner, cache: KVCache, tokens, slot, layers: list | None = None):
    """Feed tokens (R,) at cache slot `slot` -> (fp32 logits (R, V), cache)."""
    lm = model.language_model
    embeds = lm.embed(tokens[:, None])
    slots = jnp.arange(cache.length)
    mask = (slots <= slot)[None, None, None, :]
    positions = jnp.full((tokens.shape[0], 1), slot, jnp.int32)
    hidden, cache = lm.decode(embeds, positions, mask, cache, slot, layers=layers)
    return lm.lm_head(hidden[:, 0]), cache
