"""Load a model folder into a Flax module, with optional dtype overrides and device placement,
and the jitted-module base that the public model classes (api.py, clip_api.py) share."""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from vlrm_jax.checkpoint import model_dir as md
from vlrm_jax.checkpoint import transformers_files
from vlrm_jax.models import build


def override_precision(cfg, dtype: str | None, param_dtype: str | None, parts: tuple[str, ...]):
    """Replace dtype/param_dtype of the named sub-configs (the frozen towers); the Q-Former keeps fp32."""
    changes = {}
    for part in parts:
        sub = getattr(cfg, part) if part else cfg
        kw = {}
        if dtype:
            kw["dtype"] = dtype
        if param_dtype:
            kw["param_dtype"] = param_dtype
        if kw:
            changes[part] = dataclasses.replace(sub, **kw)
    if "" in changes:
        return changes[""]
    return dataclasses.replace(cfg, **changes) if changes else cfg


def load_module(model_dir: str, ctor_for_cfg: Callable, cfg) -> nnx.Module:
    ctor = lambda: ctor_for_cfg(cfg)  # noqa: E731
    abstract = build.flat_params(build.abstract(ctor))
    return build.from_params(ctor, md.load_params(model_dir, abstract))


class JittedModule:
    """Holds a module split into (graphdef, state) and runs pure functions of it under one jit:
    the graphdef and the function are static, so shapes seen before do not recompile."""

    def __init__(self, module: nnx.Module, model_dir: str | None):
        self.module = module
        self.model_dir = model_dir
        self._graphdef, self._state = nnx.split(module)
        self._tokenizer = None

    def shard(self, mesh, rules=None) -> "JittedModule":
        """Place the weights on a device mesh (see vlrm_jax.sharding); inputs sharded over the
        mesh's `data` axis then run data-parallel. Returns self."""
        from vlrm_jax import sharding

        sharding.shard_module(self.module, mesh, rules or sharding.DEFAULT_RULES)
        self._graphdef, self._state = nnx.split(self.module)
        return self

    def _run(self, fn, *args, **static):
        return _jit_call(self._graphdef, fn, self._state, *args, static=tuple(sorted(static.items())))

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            folder = self._folder("tokenizer")
            # without its files transformers guesses a slow tokenizer and fails with a misleading
            # "need sentencepiece or tiktoken"
            if not transformers_files.has_tokenizer(folder):
                raise FileNotFoundError(f"{folder} has no tokenizer (tokenizer.json / tokenizer_config.json); "
                                        "a folder written by convert/ or vlrm_jax.rl.export has one")
            self._tokenizer = AutoTokenizer.from_pretrained(folder)
        return self._tokenizer

    def _folder(self, what: str) -> str:
        if self.model_dir is None:
            raise ValueError(f"this model was not loaded from a folder, so it has no {what}")
        return self.model_dir


@functools.partial(jax.jit, static_argnums=(0, 1), static_argnames=("static",))
def _jit_call(graphdef, fn, state, *args, static=()):
    return fn(nnx.merge(graphdef, state), *args, **dict(static))


def forward(model, *args):
    """The module's own __call__, as a pure function for `JittedModule._run`."""
    return model(*args)


def ids_and_mask(input_ids, attention_mask=None):
    """int32 ids and mask; no mask means every position is valid."""
    ids = jnp.asarray(input_ids, jnp.int32)
    return ids, (jnp.ones_like(ids) if attention_mask is None else jnp.asarray(attention_mask, jnp.int32))
