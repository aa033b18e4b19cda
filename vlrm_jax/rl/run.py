"""From a run config (configs/*.py) to a validated A2C step, a batch source and the loop's settings.

Everything is checked before anything compiles: a wrong type, an impossible value or a missing
part raises `ConfigError` naming the key (main.py exits with status 2 on it).
"""
from __future__ import annotations

import dataclasses

import jax
import numpy as np
from flax import nnx

from vlrm_jax import sharding
from vlrm_jax.generate.config import GenerationConfig
from vlrm_jax.models.value import ValueConfig, ValueNetwork
from vlrm_jax.rl.config import A2CConfig
from vlrm_jax.rl.loop import LoopConfig
from vlrm_jax.rl.scoring import TokenCountScorer
from vlrm_jax.rl.step import A2CStep

POSITIVE = ("total_steps", "checkpoint_every", "keep_checkpoints", "log_every", "batch_size", "max_skips_in_row")
NON_NEGATIVE = ("seed", "eval_every", "mesh_data")


class ConfigError(ValueError):
    def __init__(self, key: str, why: str):
        super().__init__(f"config key {key}: {why}")
        self.key = key


def _int(cfg, key: str, minimum: int) -> int:
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, f"expected an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(key, f"must be >= {minimum}, got {value}")
    return value


def _dataclass(cls, fields: dict, prefix: str):
    known = {f.name for f in dataclasses.fields(cls)}
    for name in fields:
        if name not in known:
            raise ConfigError(f"{prefix}.{name}", f"unknown; expected one of {sorted(known)}")
    try:
        return cls(**fields)
    except (TypeError, ValueError) as e:
        name = next((n for n in fields if n in str(e)), "")
        raise ConfigError(f"{prefix}.{name}" if name else prefix, str(e)) from None


def validate(cfg) -> dict:
    """The typed parts of a run config; raises ConfigError naming the first bad key."""
    for key in POSITIVE:
        _int(cfg, key, 1)
    for key in NON_NEGATIVE:
        _int(cfg, key, 0)
    a2c = _dataclass(A2CConfig, dict(cfg.a2c), "a2c")
    value = _dataclass(ValueConfig, dict(cfg.value), "value")
    rollout = _dataclass(GenerationConfig, {**dict(cfg.rollout), "do_sample": True}, "rollout")
    if cfg.batch_size % a2c.micro_batches:
        raise ConfigError("batch_size", f"{cfg.batch_size} does not split into a2c.micro_batches={a2c.micro_batches}")
    devices = cfg.mesh_data or jax.device_count()
    if devices > jax.device_count():
        raise ConfigError("mesh_data", f"{devices} devices asked for, {jax.device_count()} present")
    rows = cfg.batch_size * a2c.samples_per_image // a2c.micro_batches
    if rows % devices:
        raise ConfigError("batch_size", f"a micro-batch of {rows} captions does not divide over {devices} devices "
                                        "on the data axis")
    if cfg.model.source != "random":
        raise ConfigError("model.source", f"{cfg.model.source!r}: this entry point builds 'random' tiny models only")
    if cfg.reward.kind != "token_count":
        raise ConfigError("reward.kind", f"{cfg.reward.kind!r}: expected 'token_count'")
    if cfg.data.source != "random":
        raise ConfigError("data.source", f"{cfg.data.source!r}: expected 'random'")
    return dict(a2c=a2c, value=value, rollout=rollout, devices=devices)


def random_captioner(m):
    """A BLIP2 of the configured tiny sizes, every weight normal(0, init_std), norms around 1."""
    from vlrm_jax.models.blip2 import Blip2Captioner, Blip2Config
    from vlrm_jax.models.opt import OPTConfig
    from vlrm_jax.models.qformer import QFormerConfig
    from vlrm_jax.models.vit import VisionConfig

    w = m.width
    cfg = Blip2Config(
        vision=VisionConfig(hidden_size=w, intermediate_size=3 * w // 2, num_hidden_layers=m.vision_layers,
                            num_attention_heads=2, image_size=m.image_size, patch_size=m.patch_size),
        qformer=QFormerConfig(hidden_size=w, intermediate_size=3 * w // 2, num_hidden_layers=m.qformer_layers,
                              num_attention_heads=2, encoder_hidden_size=w, vocab_size=m.vocab_size,
                              max_position_embeddings=32),
        text=OPTConfig(vocab_size=m.vocab_size, hidden_size=w, ffn_dim=3 * w // 2, num_hidden_layers=m.opt_layers,
                       num_attention_heads=2, max_position_embeddings=64, word_embed_proj_dim=w),
        num_query_tokens=m.num_query_tokens, image_token_index=None)
    model = Blip2Captioner(cfg, rngs=nnx.Rngs(m.seed))
    rng = np.random.default_rng(m.seed)
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        base = 1.0 if "scale" in path else 0.0
        var.set_value(np.asarray(base + m.init_std * rng.normal(size=var.get_value().shape), np.float32))
    return model


def random_batches(seed: int, batch: int, size: int):
    """batch_at(position): images as a pure function of (seed, position)."""
    def batch_at(position: int) -> dict:
        rng = np.random.default_rng([seed, position])
        return {"pixels": rng.normal(size=(batch, size, size, 3)).astype(np.float32)}

    return batch_at


def build(cfg):
    """(A2CStep, batch_at, LoopConfig) of a validated config."""
    parts = validate(cfg)
    captioner = random_captioner(cfg.model)
    value_net = ValueNetwork(parts["value"], captioner.cfg.text, rngs=nnx.Rngs(cfg.seed + 1))
    scorer = TokenCountScorer(cfg.reward.target, cfg.reward.eos_token_id)
    mesh = sharding.make_mesh((parts["devices"],), ("data",)) if parts["devices"] > 1 else None
    step = A2CStep(parts["a2c"], captioner, value_net, scorer, parts["rollout"], mesh=mesh)
    loop = LoopConfig(workdir=cfg.workdir, total_steps=cfg.total_steps, checkpoint_every=cfg.checkpoint_every,
                      log_every=cfg.log_every, keep_checkpoints=cfg.keep_checkpoints,
                      max_skips_in_row=cfg.max_skips_in_row)
    return step, random_batches(cfg.seed, cfg.batch_size, cfg.model.image_size), loop
