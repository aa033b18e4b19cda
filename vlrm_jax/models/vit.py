"""EVA ViT-g vision encoder as transformers' Blip2VisionModel builds it.

Pre-norm blocks with a fused qkv projection whose bias is (q_bias, k part, v_bias) — the k part
is zero in the released checkpoints but kept as a full parameter, as transformers 5 does — a
class token, learned positions and a final `post_layernorm`. Input is channels-last.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from flax import nnx

from vlrm_jax.models import common


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    hidden_size: int = 1408
    intermediate_size: int = 6144
    num_hidden_layers: int = 39
    num_attention_heads: int = 16
    image_size: int = 224
    patch_size: int = 14
    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu"
    qkv_bias: bool = True
    dtype: str = "float32"
    param_dtype: str = "float32"

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


class VisionBlock(nnx.Module):
    def __init__(self, cfg: VisionConfig, rngs: nnx.Rngs):
        d, kw = cfg.hidden_size, dict(dtype=common.to_dtype(cfg.dtype), param_dtype=common.to_dtype(cfg.param_dtype))
        self.num_heads = cfg.num_attention_heads
        self.scale = (d // cfg.num_attention_heads) ** -0.5
        self.act = common.activation(cfg.hidden_act)
        self.layer_norm1 = common.layer_norm(d, cfg.layer_norm_eps, rngs=rngs, **kw)
        self.qkv = common.dense(d, 3 * d, ("embed", "qkv"), use_bias=cfg.qkv_bias, rngs=rngs, **kw)
        self.projection = common.dense(d, d, ("heads", "embed"), rngs=rngs, **kw)
        self.layer_norm2 = common.layer_norm(d, cfg.layer_norm_eps, rngs=rngs, **kw)
        self.fc1 = common.dense(d, cfg.intermediate_size, ("embed", "mlp"), rngs=rngs, **kw)
        self.fc2 = common.dense(cfg.intermediate_size, d, ("mlp", "embed"), rngs=rngs, **kw)

    def __call__(self, x):
        h = self.layer_norm1(x)
        qkv = self.qkv(h)
        q, k, v = (common.split_heads(t, self.num_heads) for t in jnp.split(qkv, 3, axis=-1))
        x = x + self.projection(common.merge_heads(common.attention(q, k, v, None, self.scale)))
        return x + self.fc2(self.act(self.fc1(self.layer_norm2(x))))


class VisionTransformer(nnx.Module):
    def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        d = cfg.hidden_size
        pdt = common.to_dtype(cfg.param_dtype)
        self.patch_embedding = nnx.Conv(
            3,
            d,
            kernel_size=(cfg.patch_size, cfg.patch_size),
            strides=(cfg.patch_size, cfg.patch_size),
            padding="VALID",
            dtype=common.to_dtype(cfg.dtype),
            param_dtype=pdt,
            kernel_metadata={"logical_axes": (None, None, None, "embed")},
            bias_metadata={"logical_axes": ("embed",)},
            rngs=rngs,
        )
        self.class_embedding = common.param(rngs, (1, 1, d), (None, None, "embed"), pdt)
        self.position_embedding = common.param(rngs, (1, cfg.num_patches + 1, d), (None, None, "embed"), pdt)
        self.layers = common.make_stack(lambda r: VisionBlock(cfg, r), cfg.num_hidden_layers, rngs)
        self.post_layernorm = common.layer_norm(
            d, cfg.layer_norm_eps, rngs=rngs, dtype=common.to_dtype(cfg.dtype), param_dtype=pdt
        )

    def trunk(self, pixel_values):
        """Everything but the final LayerNorm: the part BLIP2 and BLIP2-ITM can share."""
        dt = common.to_dtype(self.cfg.dtype)
        patches = self.patch_embedding(pixel_values.astype(dt))  # (B, gh, gw, D)
        b = patches.shape[0]
        patches = patches.reshape(b, -1, patches.shape[-1])
        cls = jnp.broadcast_to(self.class_embedding[...].astype(dt), (b, 1, patches.shape[-1]))
        x = jnp.concatenate([cls, patches], axis=1)
        x = x + self.position_embedding[...][:, : x.shape[1]].astype(dt)
        x, _ = common.scan_stack(self.layers, lambda layer, h, _: (layer(h), None), x)
        return x

    def head(self, trunk_states):
        """The final LayerNorm over trunk states: each model that shares a trunk applies its own."""
        return self.post_layernorm(trunk_states)

    def __call__(self, pixel_values):
        """pixel_values (B, H, W, 3) normalised -> last hidden state (B, 1 + patches, D)."""
        return self.head(self.trunk(pixel_values))
