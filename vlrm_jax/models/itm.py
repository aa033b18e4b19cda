"""BLIP2-ITM as transformers' Blip2ForImageTextRetrieval builds it.

Matching (ITM): the Q-Former runs over [query tokens ; text embeddings], queries cross-attending
to the image; `itm_head` on each query output, averaged over the queries -> (B, 2) logits, index 1
is "match" (use_image_text_matching_head=True). Contrastive (ITC): normalised projected query
outputs against the normalised projected [CLS] text output, max over queries.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
from flax import nnx

from vlrm_jax import ops
from vlrm_jax.models import common
from vlrm_jax.models.qformer import QFormer, QFormerConfig
from vlrm_jax.models.vit import VisionConfig, VisionTransformer


@dataclasses.dataclass(frozen=True)
class ItmConfig:
    vision: VisionConfig = VisionConfig()
    qformer: QFormerConfig = QFormerConfig(use_qformer_text_input=True)
    num_query_tokens: int = 32
    image_text_hidden_size: int = 256

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ItmConfig":
        d = dict(d)
        return cls(vision=VisionConfig(**d.pop("vision")), qformer=QFormerConfig(**d.pop("qformer")), **d)


class TextEmbeddings(nnx.Module):
    """Word + absolute position embeddings (no LayerNorm: the Q-Former's own layernorm follows)."""

    def __init__(self, cfg: QFormerConfig, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.word_embeddings = common.embedding(cfg.vocab_size, d, ("vocab", "qformer_embed"), rngs=rngs)
        self.position_embeddings = common.embedding(cfg.max_position_embeddings, d, (None, "qformer_embed"), rngs=rngs)

    def __call__(self, input_ids):
        return self.word_embeddings(input_ids) + self.position_embeddings(jnp.arange(input_ids.shape[1]))[None]


class Blip2Itm(nnx.Module):
    def __init__(self, cfg: ItmConfig, *, rngs: nnx.Rngs):
        if not cfg.qformer.use_qformer_text_input:
            raise ValueError("BLIP2-ITM needs a Q-Former with use_qformer_text_input=True")
        self.cfg = cfg
        dq = cfg.qformer.hidden_size
        self.vision_model = VisionTransformer(cfg.vision, rngs=rngs)
        self.query_tokens = common.param(rngs, (1, cfg.num_query_tokens, dq), (None, None, "qformer_embed"))
        self.embeddings = TextEmbeddings(cfg.qformer, rngs)
        self.qformer = QFormer(cfg.qformer, rngs=rngs)
        self.vision_projection = common.dense(dq, cfg.image_text_hidden_size, ("qformer_embed", None), rngs=rngs)
        self.text_projection = common.dense(dq, cfg.image_text_hidden_size, ("qformer_embed", None), rngs=rngs)
        self.itm_head = common.dense(dq, 2, ("qformer_embed", None), rngs=rngs)

    def itm_logits(self, vision_states, input_ids, attention_mask):
        """(B, N, Dv) vision states, (B, T) text ids and mask -> (B, 2) fp32 logits."""
        b, q = input_ids.shape[0], self.cfg.num_query_tokens
        embeds = jnp.concatenate([ops.broadcast_queries(self.query_tokens[...], b), self.embeddings(input_ids)], axis=1)
        mask = jnp.concatenate([jnp.ones((b, q), attention_mask.dtype), attention_mask], axis=1)
        out = self.qformer(embeds, vision_states, query_length=q, attention_mask=mask)
        return self.itm_head(out[:, :q]).mean(axis=1)

    def image_features(self, vision_states):
        """(B, Q, D) normalised projected query outputs (ITC image side)."""
        queries = ops.broadcast_queries(self.query_tokens[...], vision_states.shape[0])
        out = self.qformer(queries, vision_states, query_length=self.cfg.num_query_tokens)
        return ops.l2_normalize(self.vision_projection(out))

    def text_features(self, input_ids, attention_mask):
        """(B, D) normalised projected [CLS] output of the text-only Q-Former (ITC text side)."""
        out = self.qformer(self.embeddings(input_ids), None, query_length=0, attention_mask=attention_mask)
        return ops.l2_normalize(self.text_projection(out[:, 0]))

    def itc_similarity(self, vision_states, input_ids, attention_mask):
        """(B_img, B_txt): cosine similarity, max over the query outputs, as transformers gives it."""
        sims = jnp.einsum("iqd,td->iqt", self.image_features(vision_states), self.text_features(input_ids, attention_mask))
        return sims.max(axis=1)

    def __call__(self, pixel_values, input_ids, attention_mask):
        return self.itm_logits(self.vision_model(pixel_values), input_ids, attention_mask)
