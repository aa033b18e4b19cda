"""Prefill and single-token steps of the captioner's OPT over a KV cache.

Slots 0..P-1 of the cache hold the prompt (P = num_query_tokens + 1: the image soft prompt then
BOS, as transformers' BLIP2 generate builds it). With `step`, one row per sequence, the k-th new
token is fed at slot P + k; the prompt has no padding, so a token's position id is its slot. With
`beams_step`, one row per image shared by its beams, the k-th tokens of the beams take slots
P + k * num_beams onwards, all at position P + k.

A decode loop takes `unrolled_layers(model)` once, before the loop, and passes them to every
`step`: XLA does not hoist slices of the stacked layer weights out of a while loop, so slicing
inside it copied all of the OPT's weights every step (about 40 % of a sampling step on CPU).
Every step's logits come from `OPTForCausalLM.decode_lm_head` (on a CPU, a few rows take the
vocabulary product table-first).
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
    return lm.decode_lm_head(hidden[:, -1]), cache


def step(model: Blip2Captioner, cache: KVCache, tokens, slot, layers: list | None = None):
    """Feed tokens (R,) at cache slot `slot` -> (fp32 logits (R, V), cache)."""
    lm = model.language_model
    embeds = lm.embed(tokens[:, None])
    slots = jnp.arange(cache.length)
    mask = (slots <= slot)[None, None, None, :]
    positions = jnp.full((tokens.shape[0], 1), slot, jnp.int32)
    hidden, cache = lm.decode(embeds, positions, mask, cache, slot, layers=layers)
    return lm.decode_lm_head(hidden[:, 0]), cache


def beams_step(model: Blip2Captioner, cache: KVCache, tokens, k, lineage, layers: list):
    """Feed the k-th new token of every beam: tokens (B, nb) -> (fp32 logits (B * nb, V), cache);
    lineage (B, nb, >= k + 1): the beam slot that holds each beam's j-th token.

    The cache has one row per image: the prompt at slots 0..P-1, then the j-th new token of beam
    slot m at P + j * nb + m, written once and never moved. An image's beams enter as nb query
    positions of its row (all at position P + k), and each one's mask lets it see the prompt and,
    for every j <= k, the slot its lineage names. When beams are reordered only the small lineage
    table is gathered, where a cache per beam would be copied whole every step; the extra scores
    against other beams' slots cost nb times the attention products, a few percent of a step."""
    b, nb = tokens.shape
    p = prompt_length(model)
    n = (cache.length - p) // nb  # new tokens this cache holds
    lm = model.language_model
    own = (lineage[..., :n, None] == jnp.arange(nb)) & (jnp.arange(n) <= k)[:, None]  # (B, nb, n, nb)
    mask = jnp.concatenate([jnp.ones((b, nb, p), bool), own.reshape(b, nb, n * nb)], axis=-1)[:, None]
    positions = jnp.full((b, nb), p + k, jnp.int32)
    hidden, cache = lm.decode(lm.embed(tokens), positions, mask, cache, p + k * nb, layers=layers)
    return lm.decode_lm_head(hidden).reshape(b * nb, -1), cache
