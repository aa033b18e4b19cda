"""Load a model folder into a Flax module, with optional dtype overrides and device placement."""
from __future__ import annotations

import dataclasses
from typing import Callable

from flax import nnx

from vlrm_jax.checkpoint import model_dir as md
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
