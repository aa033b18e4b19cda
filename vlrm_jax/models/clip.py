"""OpenCLIP (ViT-g-14, ViT-bigG-14 and other ViT + text-transformer CLIPs) as open_clip builds them.

Both towers are stacks of open_clip's `ResidualAttentionBlock`: pre-norm multi-head attention with
a fused `in_proj` (q, k, v) and an MLP `c_fc -> GELU -> c_proj`, each added to the residual.
- Image: patch conv without bias, class token first, learned positions, `ln_pre`, blocks,
  `ln_post`, the class token ('tok') or the mean of the patch tokens ('avg'), times `proj`.
- Text: token + learned position embeddings, causal blocks, `ln_final`, the state at the EOT token
  (the largest id of the row, 'argmax') or another pooling, times `text_projection`.
`encode_image` / `encode_text` return the embeddings before L2 normalisation, as open_clip's
`encode_image(normalize=False)` / `encode_text(normalize=False)` do. Pixels are channels-last.

`ClipConfig.from_open_clip` reads open_clip's model config JSON (model_configs/ViT-g-14.json);
options this port does not implement are refused there by name rather than silently ignored.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from vlrm_jax import ops
from vlrm_jax.models import common

# open_clip options that change nothing at inference (dropout, training-only outputs, how the
# fixed position table was initialised: it is stored in the checkpoint either way).
_INFERENCE_NEUTRAL = {
    "patch_dropout", "pos_embed_type", "output_tokens", "attn_pooler_queries", "attn_pooler_heads",
    "pad_id", "tokenizer_kwargs", "tokenizer_mode", "hf_model_pretrained", "hf_proj_type", "hf_pooler_type",
    "timm_model_pretrained", "timm_pool", "timm_proj", "timm_proj_bias", "timm_drop", "timm_drop_path",
    "init_logit_scale", "nonscalar_logit_scale",
}
# open_clip options that this port does not implement: accepted only at these (default) values.
_UNSUPPORTED = {
    "ls_init_value": None, "attentional_pool": False, "act_kwargs": None, "block_type": None,
    "qk_norm": False, "scaled_cosine_attn": False, "scale_heads": False, "scale_attn_inner": False,
    "scale_attn": False, "scale_fc": False, "timm_model_name": None, "hf_model_name": None,
    "hf_tokenizer_name": None, "embed_cls": False, "proj_type": "linear", "custom_text": False,
    "multimodal_cfg": None,
}


def _pair(x) -> tuple[int, int]:
    return (int(x), int(x)) if isinstance(x, (int, float)) else (int(x[0]), int(x[1]))


@dataclasses.dataclass(frozen=True)
class ClipVisionConfig:
    """open_clip's CLIPVisionCfg fields (same names and defaults) that a plain ViT uses."""

    image_size: tuple[int, int] = (224, 224)
    patch_size: tuple[int, int] = (16, 16)
    layers: int = 12
    width: int = 768
    head_width: int = 64
    mlp_ratio: float = 4.0
    no_ln_pre: bool = False
    pool_type: str = "tok"  # 'tok': class token, 'avg': mean of the patch tokens
    final_ln_after_pool: bool = False
    layer_norm_eps: float = 1e-5
    act: str = "gelu"  # 'quick_gelu' for the OpenAI-style checkpoints
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self):
        object.__setattr__(self, "image_size", _pair(self.image_size))
        object.__setattr__(self, "patch_size", _pair(self.patch_size))
        if self.pool_type not in ("tok", "avg"):
            raise ValueError(f"vision pool_type {self.pool_type!r} is not supported (expected 'tok' or 'avg')")

    @property
    def heads(self) -> int:
        return self.width // self.head_width

    @property
    def mlp_width(self) -> int:
        return int(self.width * self.mlp_ratio)  # open_clip's rounding: ViT-g 6144, ViT-bigG 8192

    @property
    def grid(self) -> tuple[int, int]:
        return self.image_size[0] // self.patch_size[0], self.image_size[1] // self.patch_size[1]

    @property
    def num_positions(self) -> int:
        return self.grid[0] * self.grid[1] + 1


@dataclasses.dataclass(frozen=True)
class ClipTextConfig:
    """open_clip's CLIPTextCfg fields (same names and defaults) that its TextTransformer uses."""

    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12
    mlp_ratio: float = 4.0
    no_causal_mask: bool = False
    pool_type: str = "argmax"  # 'argmax': at the largest id (EOT), 'eos': first eos_id, 'first', 'last'
    eos_id: int = 2
    proj_bias: bool = False
    final_ln_after_pool: bool = False  # LayerNorm is per token, so before or after pooling is the same
    layer_norm_eps: float = 1e-5
    act: str = "gelu"
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self):
        if self.pool_type not in ("argmax", "eos", "first", "last"):
            raise ValueError(f"text pool_type {self.pool_type!r} is not supported")

    @property
    def mlp_width(self) -> int:
        return int(self.width * self.mlp_ratio)


@dataclasses.dataclass(frozen=True)
class ClipConfig:
    embed_dim: int = 512
    vision: ClipVisionConfig = ClipVisionConfig()
    text: ClipTextConfig = ClipTextConfig()
    logit_bias: bool = False  # SigLIP-style checkpoints carry a learned logit bias

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ClipConfig":
        d = dict(d)
        return cls(vision=ClipVisionConfig(**d.pop("vision")), text=ClipTextConfig(**d.pop("text")), **d)

    @classmethod
    def from_open_clip(cls, model_cfg: dict[str, Any]) -> "ClipConfig":
        """From open_clip's model config dict ({"embed_dim", "vision_cfg", "text_cfg", ...})."""
        top = {k: v for k, v in model_cfg.items() if k not in ("embed_dim", "vision_cfg", "text_cfg")}
        _check_supported("model config", top, {"quick_gelu", "init_logit_bias"})
        act = "quick_gelu" if top.get("quick_gelu") else "gelu"
        vision = _tower_kwargs("vision_cfg", model_cfg["vision_cfg"], ClipVisionConfig)
        text = _tower_kwargs("text_cfg", model_cfg["text_cfg"], ClipTextConfig)
        if isinstance(vision.get("layers"), (list, tuple)):
            raise ValueError("vision_cfg: ResNet towers (layers given per stage) are not supported")
        return cls(embed_dim=model_cfg["embed_dim"], vision=ClipVisionConfig(**vision, act=act),
                   text=ClipTextConfig(**text, act=act), logit_bias=top.get("init_logit_bias") is not None)


def _check_supported(where: str, cfg: dict, known: set[str]) -> None:
    for key, value in cfg.items():
        if key in _UNSUPPORTED:
            default = _UNSUPPORTED[key]
            if value != default and (value or default):  # None, False and "" all mean "off"
                raise ValueError(f"{where}: {key}={value!r} is not supported by vlrm_jax's OpenCLIP port")
        elif key not in known and key not in _INFERENCE_NEUTRAL:
            raise ValueError(f"{where}: unknown option {key!r}")


def _tower_kwargs(where: str, cfg: dict, config_cls) -> dict:
    fields = {f.name for f in dataclasses.fields(config_cls)} - {"layer_norm_eps", "act", "dtype", "param_dtype"}
    cfg = dict(cfg)
    norm_kwargs = cfg.pop("norm_kwargs", None) or {}
    if set(norm_kwargs) - {"eps"}:
        raise ValueError(f"{where}: norm_kwargs {sorted(norm_kwargs)} are not supported (only eps)")
    _check_supported(where, cfg, fields)
    out = {k: v for k, v in cfg.items() if k in fields}
    if "eps" in norm_kwargs:
        out["layer_norm_eps"] = norm_kwargs["eps"]
    return out


class ResidualBlock(nnx.Module):
    """open_clip's ResidualAttentionBlock (nn.MultiheadAttention with a fused in_proj)."""

    def __init__(self, width: int, heads: int, mlp_width: int, eps: float, act: str, dtype: str,
                 param_dtype: str, rngs: nnx.Rngs):
        kw = dict(dtype=common.to_dtype(dtype), param_dtype=common.to_dtype(param_dtype))
        self.num_heads = heads
        self.scale = (width // heads) ** -0.5
        self.act = common.activation(act)
        self.ln_1 = common.layer_norm(width, eps, rngs=rngs, **kw)
        self.in_proj = common.dense(width, 3 * width, ("embed", "qkv"), rngs=rngs, **kw)
        self.out_proj = common.dense(width, width, ("heads", "embed"), rngs=rngs, **kw)
        self.ln_2 = common.layer_norm(width, eps, rngs=rngs, **kw)
        self.c_fc = common.dense(width, mlp_width, ("embed", "mlp"), rngs=rngs, **kw)
        self.c_proj = common.dense(mlp_width, width, ("mlp", "embed"), rngs=rngs, **kw)

    def __call__(self, x, mask):
        qkv = self.in_proj(self.ln_1(x))
        q, k, v = (common.split_heads(t, self.num_heads) for t in jnp.split(qkv, 3, axis=-1))
        x = x + self.out_proj(common.merge_heads(common.attention(q, k, v, mask, self.scale)))
        return x + self.c_proj(self.act(self.c_fc(self.ln_2(x))))


def _blocks(cfg, heads: int, rngs: nnx.Rngs) -> nnx.Module:
    return common.make_stack(
        lambda r: ResidualBlock(cfg.width, heads, cfg.mlp_width, cfg.layer_norm_eps, cfg.act, cfg.dtype,
                                cfg.param_dtype, r),
        cfg.layers, rngs)


def _run_blocks(blocks: nnx.Module, x, mask):
    x, _ = common.scan_stack(blocks, lambda layer, h, _: (layer(h, mask), None), x)
    return x


class ClipVisionTower(nnx.Module):
    def __init__(self, cfg: ClipVisionConfig, embed_dim: int, *, rngs: nnx.Rngs):
        self.cfg = cfg
        kw = dict(dtype=common.to_dtype(cfg.dtype), param_dtype=common.to_dtype(cfg.param_dtype))
        pdt, d = kw["param_dtype"], cfg.width
        self.conv1 = nnx.Conv(3, d, kernel_size=cfg.patch_size, strides=cfg.patch_size, padding="VALID",
                              use_bias=False, kernel_metadata={"logical_axes": (None, None, None, "embed")},
                              rngs=rngs, **kw)
        self.class_embedding = common.param(rngs, (d,), ("embed",), pdt)
        self.positional_embedding = common.param(rngs, (cfg.num_positions, d), (None, "embed"), pdt)
        self.ln_pre = None if cfg.no_ln_pre else common.layer_norm(d, cfg.layer_norm_eps, rngs=rngs, **kw)
        self.blocks = _blocks(cfg, cfg.heads, rngs)
        self.ln_post = common.layer_norm(d, cfg.layer_norm_eps, rngs=rngs, **kw)
        self.proj = common.param(rngs, (d, embed_dim), ("embed", None), pdt)

    def trunk(self, pixel_values):
        """(B, H, W, 3) normalised pixels -> every token after the blocks (B, 1 + patches, width),
        before `ln_post`."""
        if tuple(pixel_values.shape[1:3]) != self.cfg.image_size:
            raise ValueError(f"pixel_values are {tuple(pixel_values.shape[1:3])}, "
                             f"the model wants {self.cfg.image_size}")
        dt = common.to_dtype(self.cfg.dtype)
        patches = self.conv1(pixel_values.astype(dt))
        b, d = patches.shape[0], patches.shape[-1]
        cls = jnp.broadcast_to(self.class_embedding[...].astype(dt), (b, 1, d))
        x = jnp.concatenate([cls, patches.reshape(b, -1, d)], axis=1) + self.positional_embedding[...].astype(dt)
        if self.ln_pre is not None:
            x = self.ln_pre(x)
        return _run_blocks(self.blocks, x, None)

    def head(self, trunk_states):
        """Trunk tokens -> (B, embed_dim): pooling, `ln_post` and the projection."""
        dt = common.to_dtype(self.cfg.dtype)
        return self._pool(trunk_states) @ self.proj[...].astype(dt)

    def __call__(self, pixel_values):
        """(B, H, W, 3) normalised pixels -> (B, embed_dim)."""
        return self.head(self.trunk(pixel_values))

    def _pool(self, x):
        """open_clip's VisionTransformer._pool without an attentional pooler."""
        pick = (lambda h: h[:, 0]) if self.cfg.pool_type == "tok" else (lambda h: h[:, 1:].mean(axis=1))
        return self.ln_post(pick(x)) if self.cfg.final_ln_after_pool else pick(self.ln_post(x))


class ClipTextTower(nnx.Module):
    def __init__(self, cfg: ClipTextConfig, embed_dim: int, *, rngs: nnx.Rngs):
        self.cfg = cfg
        kw = dict(dtype=common.to_dtype(cfg.dtype), param_dtype=common.to_dtype(cfg.param_dtype))
        d = cfg.width
        self.token_embedding = common.embedding(cfg.vocab_size, d, ("vocab", "embed"), rngs=rngs, **kw)
        self.positional_embedding = common.param(rngs, (cfg.context_length, d), (None, "embed"), kw["param_dtype"])
        self.blocks = _blocks(cfg, cfg.heads, rngs)
        self.ln_final = common.layer_norm(d, cfg.layer_norm_eps, rngs=rngs, **kw)
        if cfg.proj_bias:
            self.text_projection = common.dense(d, embed_dim, ("embed", None), rngs=rngs, **kw)
        else:
            self.text_projection = common.param(rngs, (d, embed_dim), ("embed", None), kw["param_dtype"])

    def __call__(self, input_ids):
        """(B, L) token ids, L <= context_length -> (B, embed_dim).

        With the causal mask a position never sees what follows it, so ids cut after the EOT
        token (L < context_length) give the same embedding as the zero-padded full context.
        """
        length = input_ids.shape[1]
        if length > self.cfg.context_length:
            raise ValueError(f"input_ids have {length} positions, the context length is {self.cfg.context_length}")
        if self.cfg.pool_type == "last" and length != self.cfg.context_length:
            raise ValueError("pool_type 'last' needs input_ids padded to the full context length")
        dt = common.to_dtype(self.cfg.dtype)
        x = self.token_embedding(input_ids) + self.positional_embedding[...][:length].astype(dt)
        mask = None if self.cfg.no_causal_mask else jnp.tril(jnp.ones((length, length), bool))[None, None]
        x = self.ln_final(_run_blocks(self.blocks, x, mask))
        pooled = x[jnp.arange(x.shape[0]), self._pool_index(input_ids)]
        if self.cfg.proj_bias:
            return self.text_projection(pooled)
        return pooled @ self.text_projection[...].astype(dt)

    def _pool_index(self, input_ids):
        """Which position each row is read at (open_clip's text_global_pool)."""
        pool = self.cfg.pool_type
        if pool == "argmax":  # EOT has the largest id of the vocabulary; first maximum, as torch
            return jnp.argmax(input_ids, axis=-1)
        if pool == "eos":
            return jnp.argmax(input_ids == self.cfg.eos_id, axis=-1)
        return jnp.full(input_ids.shape[:1], 0 if pool == "first" else input_ids.shape[1] - 1)


class ClipModel(nnx.Module):
    def __init__(self, cfg: ClipConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.visual = ClipVisionTower(cfg.vision, cfg.embed_dim, rngs=rngs)
        self.text = ClipTextTower(cfg.text, cfg.embed_dim, rngs=rngs)
        # kept in fp32 whatever the towers use: one scalar, and exp() of it is large
        self.logit_scale = nnx.Param(jnp.zeros((), jnp.float32), logical_axes=())
        self.logit_bias = nnx.Param(jnp.zeros((), jnp.float32), logical_axes=()) if cfg.logit_bias else None

    def encode_image(self, pixel_values) -> jax.Array:
        """(B, H, W, 3) pixels normalised as open_clip's transform does -> (B, embed_dim), not normalised."""
        return self.visual(pixel_values)

    def encode_text(self, input_ids) -> jax.Array:
        """(B, L) open_clip tokenizer ids -> (B, embed_dim), not normalised."""
        return self.text(input_ids)

    def logits(self, pixel_values, input_ids) -> jax.Array:
        """(B_images, B_texts) as open_clip's get_logits: exp(logit_scale) * cosine (+ logit_bias)."""
        image = ops.l2_normalize(self.encode_image(pixel_values).astype(jnp.float32))
        text = ops.l2_normalize(self.encode_text(input_ids).astype(jnp.float32))
        out = jnp.exp(self.logit_scale[...]) * image @ text.T
        return out if self.logit_bias is None else out + self.logit_bias[...]

