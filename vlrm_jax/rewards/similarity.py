"""The model-based reward terms, as pure functions of Flax modules (jit- and shard-friendly).

- sim: BLIP2-ITM's "match" logit (index 1) before softmax, averaged over the query outputs.
- RS:  Phi = (D - mean D) / std D with D_i = softmax(S, axis 0)_ii * softmax(S, axis 1)_ii and
       S_ij = cos(clip(image_i), clip(text_j)) over the whole (global) batch; VLRM-RS adds 0.3 Phi.
- ref: mean log-probability of the caption tokens under the reference LM, text only.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from vlrm_jax import ops


def itm_match_logit(itm, vision_states, itm_input_ids, itm_attention_mask):
    """(B,) match logits of image i with caption i. vision_states: the ITM ViT's output
    (post-LayerNorm), e.g. `itm.vision_model(pixels)` or its LayerNorm over a shared trunk."""
    return itm.itm_logits(vision_states, itm_input_ids, itm_attention_mask)[:, 1]


def retrieval_specificity(image_emb, text_emb):
    """Phi (B,): how much better caption i singles out image i than the rest of the batch.

    Computed over the global batch: under jit with a batch-sharded input, XLA gathers the (B, D)
    embeddings, so the value does not depend on how the batch is split over devices. std is the
    population std (ddof 0)."""
    image, text = (ops.l2_normalize(x.astype(jnp.float32)) for x in (image_emb, text_emb))
    s = image @ text.T  # S[i, j] = cos(image_i, text_j)
    d = jnp.diagonal(jax.nn.softmax(s, axis=0) * jax.nn.softmax(s, axis=1))
    std = d.std()
    # a batch of identical D values (e.g. B = 1) has std 0: Phi is then 0, not NaN
    return jnp.where(std > 0, (d - d.mean()) / jnp.where(std > 0, std, 1.0), 0.0)


def reference_logprob(ref_lm, tokens, mask, bos_token_id: int):
    """(B,) mean log-probability of the caption tokens (up to and including EOS, as `mask`
    says) under the reference LM, conditioned on BOS only (no image)."""
    b = tokens.shape[0]
    ids = jnp.concatenate([jnp.full((b, 1), bos_token_id, tokens.dtype), tokens], axis=1)
    attention = jnp.concatenate([jnp.ones((b, 1), jnp.int32), mask.astype(jnp.int32)], axis=1)
    logits = ref_lm(ids, attention)[:, :-1]
    return ops.masked_mean(ops.token_logprob(logits, tokens), mask, axis=1)
