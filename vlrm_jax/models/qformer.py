"""BLIP2 Q-Former as transformers' Blip2QFormerModel builds it.

A BERT-style post-norm encoder over [query tokens ; optional text tokens]. Query positions also
cross-attend to the image every `cross_attention_frequency` layers and have their own feed-forward
(`ffn_query`); text positions use `ffn_text`, which exists only when `use_qformer_text_input`
(BLIP2-ITM). transformers keeps this module in fp32 whatever the rest does, and so does this one:
its dtypes are not configurable.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from flax import nnx

from vlrm_jax.models import common


@dataclasses.dataclass(frozen=True)
class QFormerConfig:
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    cross_attention_frequency: int = 2
    encoder_hidden_size: int = 1408
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    use_qformer_text_input: bool = False
    vocab_size: int = 30523
    max_position_embeddings: int = 512
    pad_token_id: int = 0


class QFormerAttention(nnx.Module):
    """Multi-head attention + dense + residual LayerNorm (BERT's attention block)."""

    def __init__(self, cfg: QFormerConfig, kv_dim: int, kv_axis: str, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.num_heads = cfg.num_attention_heads
        self.scale = (d // cfg.num_attention_heads) ** -0.5
        self.query = common.dense(d, d, ("qformer_embed", "qformer_heads"), rngs=rngs)
        self.key = common.dense(kv_dim, d, (kv_axis, "qformer_heads"), rngs=rngs)
        self.value = common.dense(kv_dim, d, (kv_axis, "qformer_heads"), rngs=rngs)
        self.dense = common.dense(d, d, ("qformer_heads", "qformer_embed"), rngs=rngs)
        self.norm = common.layer_norm(d, cfg.layer_norm_eps, rngs=rngs)

    def __call__(self, x, context, mask):
        q = common.split_heads(self.query(x), self.num_heads)
        k = common.split_heads(self.key(context), self.num_heads)
        v = common.split_heads(self.value(context), self.num_heads)
        out = common.merge_heads(common.attention(q, k, v, mask, self.scale))
        return self.norm(self.dense(out) + x)


class QFormerFeedForward(nnx.Module):
    def __init__(self, cfg: QFormerConfig, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.act = common.activation(cfg.hidden_act)
        self.intermediate = common.dense(d, cfg.intermediate_size, ("qformer_embed", "qformer_mlp"), rngs=rngs)
        self.output = common.dense(cfg.intermediate_size, d, ("qformer_mlp", "qformer_embed"), rngs=rngs)
        self.norm = common.layer_norm(d, cfg.layer_norm_eps, rngs=rngs)

    def __call__(self, x):
        return self.norm(self.output(self.act(self.intermediate(x))) + x)


class QFormerLayer(nnx.Module):
    def __init__(self, cfg: QFormerConfig, index: int, rngs: nnx.Rngs):
        self.self_attention = QFormerAttention(cfg, cfg.hidden_size, "qformer_embed", rngs)
        self.has_cross_attention = index % cfg.cross_attention_frequency == 0
        self.cross_attention = (
            QFormerAttention(cfg, cfg.encoder_hidden_size, "embed", rngs) if self.has_cross_attention else None
        )
        self.ffn_query = QFormerFeedForward(cfg, rngs)
        self.ffn_text = QFormerFeedForward(cfg, rngs) if cfg.use_qformer_text_input else None

    def __call__(self, x, self_mask, image, image_mask, query_length: int):
        x = self.self_attention(x, x, self_mask)
        if query_length == 0:
            return self.ffn_text(x)
        queries = x[:, :query_length]
        if self.has_cross_attention:
            queries = self.cross_attention(queries, image, image_mask)
        queries = self.ffn_query(queries)
        if x.shape[1] == query_length:
            return queries
        return jnp.concatenate([queries, self.ffn_text(x[:, query_length:])], axis=1)


class QFormer(nnx.Module):
    def __init__(self, cfg: QFormerConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.layernorm = common.layer_norm(cfg.hidden_size, cfg.layer_norm_eps, rngs=rngs)
        self.layers = nnx.List([QFormerLayer(cfg, i, rngs) for i in range(cfg.num_hidden_layers)])

    def __call__(self, embeds, image, *, query_length: int, attention_mask=None):
        """embeds (B, T, D) = [queries ; text]; image (B, N, E) or None for text-only;
        attention_mask (B, T) over `embeds` (padding), None for all-valid. Returns (B, T, D) fp32."""
        x = self.layernorm(embeds.astype(jnp.float32))
        self_mask = None if attention_mask is None else attention_mask.astype(bool)[:, None, None, :]
        if image is not None:
            image = image.astype(jnp.float32)
        for layer in self.layers:
            x = layer(x, self_mask, image, None, query_length)
        return x
