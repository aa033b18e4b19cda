"""BLIP2 captioner (Blip2ForConditionalGeneration with an OPT language model).

image -> ViT -> Q-Former over learned query tokens -> language projection -> soft prompt of
`num_query_tokens` embeddings placed before the text embeddings (transformers puts image-token
placeholders then BOS and scatters the projected queries into the placeholders; for every valid
position this is the same computation).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
from flax import nnx

from vlrm_jax import ops
from vlrm_jax.models import common
from vlrm_jax.models.opt import OPTConfig, OPTForCausalLM, causal_mask, position_ids
from vlrm_jax.models.qformer import QFormer, QFormerConfig
from vlrm_jax.models.vit import VisionConfig, VisionTransformer


@dataclasses.dataclass(frozen=True)
class Blip2Config:
    vision: VisionConfig = VisionConfig()
    qformer: QFormerConfig = QFormerConfig()
    text: OPTConfig = OPTConfig()
    num_query_tokens: int = 32
    image_token_index: int | None = 50265
    # The projection is trained by the policy update: fp32 by default, like the Q-Former.
    projection_dtype: str = "float32"
    projection_param_dtype: str = "float32"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Blip2Config":
        d = dict(d)
        return cls(
            vision=VisionConfig(**d.pop("vision")),
            qformer=QFormerConfig(**d.pop("qformer")),
            text=OPTConfig(**d.pop("text")),
            **d,
        )

    def replace(self, **kw) -> "Blip2Config":
        return dataclasses.replace(self, **kw)


# What the policy update trains (the paper's A2C and the shapes world's captioner stage): the
# query tokens, Q-Former and language projection; the ViT and OPT stay frozen.
POLICY_TRAINABLE = ("query_tokens", "qformer", "language_projection")


def parts_filter(parts: tuple[str, ...]) -> nnx.filterlib.Filter:
    """An nnx filter of the parameters under the named top-level attributes."""
    return nnx.All(nnx.Param, lambda path, _: path[0] in parts)


class Blip2Captioner(nnx.Module):
    def __init__(self, cfg: Blip2Config, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.vision_model = VisionTransformer(cfg.vision, rngs=rngs)
        self.query_tokens = common.param(
            rngs, (1, cfg.num_query_tokens, cfg.qformer.hidden_size), (None, None, "qformer_embed")
        )
        self.qformer = QFormer(cfg.qformer, rngs=rngs)
        self.language_projection = common.dense(
            cfg.qformer.hidden_size,
            cfg.text.word_embed_proj_dim,
            ("qformer_embed", "embed"),
            dtype=common.to_dtype(cfg.projection_dtype),
            param_dtype=common.to_dtype(cfg.projection_param_dtype),
            rngs=rngs,
        )
        self.language_model = OPTForCausalLM(cfg.text, rngs=rngs)

    def query_output(self, vision_states):
        """Q-Former over the learned queries, cross-attending to the image: (B, Q, Dq) fp32."""
        queries = ops.broadcast_queries(self.query_tokens[...], vision_states.shape[0])
        return self.qformer(queries, vision_states, query_length=queries.shape[1])

    def soft_prompt(self, vision_states):
        """(B, N, Dv) vision states -> (B, Q, E) embeddings that prefix the OPT input."""
        queries = self.query_output(vision_states).astype(vision_states.dtype)
        return self.language_projection(queries)

    def prompt_inputs(self, soft_prompt, input_ids, attention_mask):
        """[soft prompt ; token embeddings] and the matching (B, Q + T) padding mask."""
        text = self.language_model.embed(input_ids)
        embeds = jnp.concatenate([soft_prompt.astype(text.dtype), text], axis=1)
        query_mask = jnp.ones(soft_prompt.shape[:2], attention_mask.dtype)
        return embeds, jnp.concatenate([query_mask, attention_mask], axis=1)

    def __call__(self, pixel_values, input_ids, attention_mask=None):
        """pixel_values (B, H, W, 3); input_ids (B, T) text ids starting with BOS (left padding
        allowed). Returns fp32 logits (B, T, V) for the text positions."""
        return self.text_logits(self.vision_model(pixel_values), input_ids, attention_mask)

    def text_logits(self, vision_states, input_ids, attention_mask=None):
        """The same from vision-model states (B, N, D): a frozen ViT's output computed once can
        serve many text batches, and the reward models that share its trunk."""
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, jnp.int32)
        prompt = self.soft_prompt(vision_states)
        embeds, mask = self.prompt_inputs(prompt, input_ids, attention_mask)
        hidden, _ = self.language_model.decode(embeds, position_ids(mask), causal_mask(mask))
        return self.language_model.lm_head(hidden[:, prompt.shape[1] :])
