"""OPT decoder-only language model as transformers' OPTForCausalLM builds it.

Learned positions looked up at `position_id + 2` (OPT's offset), with position ids computed from
the attention mask so left padding does not shift them; pre-LN blocks (post-LN when
`do_layer_norm_before` is False, as in OPT-350m); optional project_in / project_out when the word
embedding width differs from the hidden width; lm_head tied to the token embedding.

The decoder takes an explicit boolean attention mask (B, 1, Tq, Tk) and, for decoding, a `KVCache`
(one (B, heads, max_len, head_dim) buffer per layer) into which the new keys and values are written
at `cache_index`. Callers (generation, scoring) build masks with `causal_mask`.

Low-rank adapters (LoRA) enter the full forward as arguments, never as parameters of this module:
the value network of the RL step keeps its adapters apart, so generation, the policy and the
reference LM read the same frozen weights unchanged (`decode(..., lora=...)`).
"""
from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from vlrm_jax.models import common

POSITION_OFFSET = 2
# up to this many rows a CPU decode step takes its lm_head table-first (`decode_lm_head`)
CPU_TABLE_FIRST_HEAD_ROWS = 16


@dataclasses.dataclass(frozen=True)
class OPTConfig:
    vocab_size: int = 50272
    hidden_size: int = 2560
    ffn_dim: int = 10240
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    max_position_embeddings: int = 2048
    word_embed_proj_dim: int = 2560
    do_layer_norm_before: bool = True
    remove_final_layer_norm: bool = False
    activation_function: str = "relu"
    enable_bias: bool = True
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 1
    bos_token_id: int = 2
    eos_token_id: int = 2
    dtype: str = "float32"
    param_dtype: str = "float32"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


class KVCache(NamedTuple):
    """Keys (B, heads, head_dim, max_len) and values (B, heads, max_len, head_dim), one buffer of
    each per layer.

    Separate buffers, not one stacked (layers, ...) array: a decode step then writes the new
    token into each layer's buffer and attention reads it where it lies, while slicing a layer
    out of a stacked array (as `lax.scan` over layers does) copies the whole slab every step,
    which dominated decoding time at OPT-2.7B shapes. Heads first, and the keys with positions
    last: both attention products are then plain batched (q, d) @ (d, k) and (q, k) @ (k, d)
    matrix products over the cache as it lies (keys stored (.., max_len, head_dim) made XLA's CPU
    backend transpose them on every read: the score product took 5x longer, measured on a
    beam-search cache). The batch axis is 0 of every buffer."""

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]

    @classmethod
    def zeros(cls, cfg: OPTConfig, batch: int, max_len: int, dtype=None) -> "KVCache":
        k_shape = (batch, cfg.num_attention_heads, cfg.head_dim, max_len)
        v_shape = (batch, cfg.num_attention_heads, max_len, cfg.head_dim)
        dtype = dtype or common.to_dtype(cfg.dtype)
        layers = range(cfg.num_hidden_layers)
        return cls(tuple(jnp.zeros(k_shape, dtype) for _ in layers), tuple(jnp.zeros(v_shape, dtype) for _ in layers))

    @property
    def length(self) -> int:
        return self.v[0].shape[2]

    def grown(self, length: int) -> "KVCache":
        """The same cache with room for `length` positions (new slots zero)."""
        extra = length - self.length
        return KVCache(tuple(jnp.pad(k, ((0, 0), (0, 0), (0, 0), (0, extra))) for k in self.k),
                       tuple(jnp.pad(v, ((0, 0), (0, 0), (0, extra), (0, 0))) for v in self.v))


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


class LoRAWeights(NamedTuple):
    """Adapters of some of a block's linear layers: {target name: (a (in, r), b (r, out))}, each
    array with a leading layers axis when passed to `decode`; the output of a target grows by
    scale * (h @ a) @ b, as peft's LoRA does (scale = alpha / rank)."""

    adapters: dict
    scale: float


def position_ids(attention_mask: jax.Array) -> jax.Array:
    """OPT's position ids: running count of valid tokens minus one (padding gets -1)."""
    mask = attention_mask.astype(jnp.int32)
    return jnp.cumsum(mask, axis=1) * mask - 1


def causal_mask(attention_mask: jax.Array) -> jax.Array:
    """(B, T) padding mask -> (B, 1, T, T): causal and never attending to padding."""
    t = attention_mask.shape[1]
    causal = jnp.tril(jnp.ones((t, t), bool))
    return (causal[None] & attention_mask.astype(bool)[:, None, :])[:, None]


class OPTBlock(nnx.Module):
    def __init__(self, cfg: OPTConfig, rngs: nnx.Rngs):
        d = cfg.hidden_size
        kw = dict(dtype=common.to_dtype(cfg.dtype), param_dtype=common.to_dtype(cfg.param_dtype))
        self.pre_norm = cfg.do_layer_norm_before
        self.num_heads = cfg.num_attention_heads
        self.scale = cfg.head_dim**-0.5
        self.act = common.activation(cfg.activation_function)
        lin = dict(use_bias=cfg.enable_bias, rngs=rngs, **kw)
        self.q_proj = common.dense(d, d, ("embed", "heads"), **lin)
        self.k_proj = common.dense(d, d, ("embed", "heads"), **lin)
        self.v_proj = common.dense(d, d, ("embed", "heads"), **lin)
        self.out_proj = common.dense(d, d, ("heads", "embed"), **lin)
        self.self_attn_layer_norm = common.layer_norm(d, cfg.layer_norm_eps, rngs=rngs, **kw)
        self.fc1 = common.dense(d, cfg.ffn_dim, ("embed", "mlp"), **lin)
        self.fc2 = common.dense(cfg.ffn_dim, d, ("mlp", "embed"), **lin)
        self.final_layer_norm = common.layer_norm(d, cfg.layer_norm_eps, rngs=rngs, **kw)

    def _linear(self, name: str, h, lora: LoRAWeights | None):
        y = getattr(self, name)(h)
        if lora is None or name not in lora.adapters:
            return y
        a, b = lora.adapters[name]
        delta = (h.astype(a.dtype) @ a) @ b
        return y + (lora.scale * delta).astype(y.dtype)

    def __call__(self, x, mask, kv=None, cache_index=None, lora: LoRAWeights | None = None):
        """kv: this layer's (k, v) cache or None; lora: this layer's adapters or None.
        Returns (x, (k, v))."""
        h = self.self_attn_layer_norm(x) if self.pre_norm else x
        q = common.split_heads(self._linear("q_proj", h, lora), self.num_heads)
        k = common.split_heads(self._linear("k_proj", h, lora), self.num_heads)
        v = common.split_heads(self._linear("v_proj", h, lora), self.num_heads)
        if kv is not None:  # keys (B, H, D, S), values (B, H, S, D): only the new tokens are transposed
            k = jax.lax.dynamic_update_slice_in_dim(kv[0], k.transpose(0, 2, 3, 1).astype(kv[0].dtype), cache_index, axis=3)
            v = jax.lax.dynamic_update_slice_in_dim(kv[1], v.swapaxes(1, 2).astype(kv[1].dtype), cache_index, axis=2)
        attn = common.attention(q, k, v, mask, self.scale, heads_first_kv=kv is not None)
        x = x + self._linear("out_proj", common.merge_heads(attn), lora)
        if not self.pre_norm:
            x = self.self_attn_layer_norm(x)
        h = self.final_layer_norm(x) if self.pre_norm else x
        x = x + self._linear("fc2", self.act(self._linear("fc1", h, lora)), lora)
        if not self.pre_norm:
            x = self.final_layer_norm(x)
        return x, (k, v)


class OPTForCausalLM(nnx.Module):
    def __init__(self, cfg: OPTConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        kw = dict(dtype=common.to_dtype(cfg.dtype), param_dtype=common.to_dtype(cfg.param_dtype))
        d, e = cfg.hidden_size, cfg.word_embed_proj_dim
        self.embed_tokens = common.embedding(cfg.vocab_size, e, ("vocab", "embed"), rngs=rngs, **kw)
        self.embed_positions = common.embedding(
            cfg.max_position_embeddings + POSITION_OFFSET, d, (None, "embed"), rngs=rngs, **kw
        )
        self.project_in = common.dense(e, d, (None, "embed"), use_bias=False, rngs=rngs, **kw) if e != d else None
        self.project_out = common.dense(d, e, ("embed", None), use_bias=False, rngs=rngs, **kw) if e != d else None
        self.layers = common.make_stack(lambda r: OPTBlock(cfg, r), cfg.num_hidden_layers, rngs)
        has_final_norm = cfg.do_layer_norm_before and not cfg.remove_final_layer_norm
        self.final_layer_norm = common.layer_norm(d, cfg.layer_norm_eps, rngs=rngs, **kw) if has_final_norm else None

    def embed(self, input_ids):
        return self.embed_tokens(input_ids)

    def decode(self, embeds, positions, mask, cache: KVCache | None = None, cache_index=None,
               lora: LoRAWeights | None = None, remat: bool = False, layers: list | None = None):
        """embeds (B, T, E); positions (B, T) from `position_ids`; mask (B, 1, T, S) bool.
        Without a cache S = T; with one, S = cache length and the new keys/values are written at
        `cache_index`. `lora` (full forward only) adds adapters with a leading layers axis;
        `remat` recomputes each layer in the backward pass instead of storing its activations.
        `layers` (cached decoding only): `common.unstack(self.layers)` taken once by a decode loop
        outside its loop body; sliced inside it, every step would copy every layer's weights.
        Returns (hidden (B, T, E), updated cache or None)."""
        x = self.project_in(embeds) if self.project_in is not None else embeds
        x = x + self.embed_positions(positions + POSITION_OFFSET)
        if cache is None:
            scale = lora.scale if lora is not None else 0.0
            adapters = lora.adapters if lora is not None else None

            def body(layer, h, layer_adapters):
                layer_lora = LoRAWeights(layer_adapters, scale) if layer_adapters is not None else None
                return layer(h, mask, lora=layer_lora)[0], None

            x, _ = common.scan_stack(self.layers, body, x, adapters, remat=remat)
            new_cache = None
        else:  # layers unrolled over their own cache buffers (see KVCache)
            if lora is not None:
                raise ValueError("LoRA adapters apply to the full forward only, not to cached decoding")
            ks, vs = [], []
            for layer, k, v in zip(layers or common.unstack(self.layers), cache.k, cache.v):
                x, (k, v) = layer(x, mask, (k, v), cache_index)
                ks.append(k)
                vs.append(v)
            new_cache = KVCache(tuple(ks), tuple(vs))
        if self.final_layer_norm is not None:
            x = self.final_layer_norm(x)
        if self.project_out is not None:
            x = self.project_out(x)
        return x, new_cache

    def lm_head(self, hidden):
        """Tied output projection; logits in fp32."""
        return self.embed_tokens.attend(hidden).astype(jnp.float32)

    def decode_lm_head(self, hidden):
        """`lm_head` for a decode step. On a CPU, with at most CPU_TABLE_FIRST_HEAD_ROWS rows, the
        product is taken table-first, (V, E) @ (E, R), and its small (V, R) result transposed:
        XLA's CPU product reads the table as a transposed operand in hidden @ table.T, which
        took 5.0 ms a step against 3.8 ms at 16 rows (docs/generation.md). The optimization
        barrier keeps XLA from folding the transpose back into the product. The values equal
        `lm_head`'s up to float rounding (the same sums in another order). Other platforms, and
        more rows (no gain at 20-64, a loss at 80), use `lm_head`."""
        rows = math.prod(hidden.shape[:-1])
        if rows > CPU_TABLE_FIRST_HEAD_ROWS:
            return self.lm_head(hidden)

        def table_first(h, table):
            h, table = self.embed_tokens.promote_dtype((h, table), dtype=self.embed_tokens.dtype)
            logits = jax.lax.optimization_barrier(table @ h.reshape(rows, -1).T).T
            return logits.reshape(*h.shape[:-1], -1).astype(jnp.float32)

        return jax.lax.platform_dependent(hidden, self.embed_tokens.embedding[...], cpu=table_first,
                                          default=lambda h, _: self.lm_head(h))

    def lm_logits_at(self, hidden, ids):
        """The logits `lm_head` gives at the vocabulary ids (..., S) only, in fp32: hidden (..., E).
        S rows of the embedding per position instead of all of them."""
        hidden, table = self.embed_tokens.promote_dtype((hidden, self.embed_tokens.embedding[...]),
                                                        dtype=self.embed_tokens.dtype)
        return jnp.einsum("...e,...se->...s", hidden, table[ids]).astype(jnp.float32)

    def __call__(self, input_ids, attention_mask=None, lora: LoRAWeights | None = None):
        """Full forward like transformers' OPTForCausalLM: (B, T) ids -> (B, T, V) logits."""
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, jnp.int32)
        hidden, _ = self.decode(
            self.embed(input_ids), position_ids(attention_mask), causal_mask(attention_mask), lora=lora
        )
        return self.lm_head(hidden)
