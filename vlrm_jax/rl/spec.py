"""A run config validated: each section read into its typed record (vlrm_jax/rl/sections.py),
then what ties sections together, the batch against the mesh and the micro-batches, the mesh
against the devices, the folders and data sources on disk. `validate` returns a `RunSpec`; a
wrong type, an impossible value or a missing folder raises `ConfigError` naming the key, before
anything is built or compiled.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import jax
import numpy as np

from vlrm_jax import sharding
from vlrm_jax.generate.config import GenerationConfig
from vlrm_jax.models.value import ValueConfig
from vlrm_jax.rl.config import A2CConfig
from vlrm_jax.rl.loop import LoopConfig
from vlrm_jax.rl.sections import (ConfigError, DataConfig, DistributedConfig, EvalConfig, MeshConfig, ModelConfig,
                                  RewardConfig, typed)

# config section -> its record; the keys at the top level (other than these and mesh_rules) are LoopConfig's
SECTIONS = {"mesh": MeshConfig, "distributed": DistributedConfig, "model": ModelConfig, "rollout": GenerationConfig,
            "reward": RewardConfig, "a2c": A2CConfig, "value": ValueConfig, "data": DataConfig, "eval": EvalConfig}
RULES_KEY = "mesh_rules"
FIXED = {"rollout": {"do_sample": True}}  # what a section's record holds that the config does not choose


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """A validated run config: one typed record per section, the mesh resolved against the
    devices (data, fsdp, tensor) and the sharding rules as a table."""

    loop: LoopConfig
    mesh: MeshConfig
    distributed: DistributedConfig
    model: ModelConfig
    rollout: GenerationConfig
    reward: RewardConfig
    a2c: A2CConfig
    value: ValueConfig
    data: DataConfig
    eval: EvalConfig
    mesh_shape: tuple[int, ...]
    rules: tuple

    @property
    def seed(self) -> int:
        return self.loop.seed

    @property
    def batch_size(self) -> int:
        return self.loop.batch_size


def distributed_config(cfg) -> DistributedConfig:
    """The `distributed` section, checked before jax is initialised (so before `validate`)."""
    return typed(DistributedConfig, cfg.distributed, "distributed")


def validate(cfg, device_count: int | None = None, process_count: int | None = None,
             check_paths: bool = True) -> RunSpec:
    """The config as a RunSpec; raises ConfigError naming the first bad key. The mesh is checked
    against this machine's devices and processes unless others are given (a compile target's);
    check_paths=False leaves folders and data sources unread (a step built from shapes alone)."""
    sections = {name: typed(cls, cfg[name], name, FIXED.get(name)) for name, cls in SECTIONS.items()}
    top = {key: cfg[key] for key in cfg if key not in SECTIONS and key != RULES_KEY}
    loop = typed(LoopConfig, top, "")
    shape = _mesh(sections["mesh"], jax.device_count() if device_count is None else device_count,
                  jax.process_count() if process_count is None else process_count)
    spec = RunSpec(loop=loop, mesh_shape=shape, rules=_rules_table(cfg[RULES_KEY]), **sections)
    _check_batch(spec)
    if check_paths:
        _check_paths(spec)
    return spec


def _check_batch(spec: RunSpec) -> None:
    """The rollout batch against the micro-batches, the minibatches and the batch axes of the mesh."""
    a2c, batch = spec.a2c, spec.batch_size
    if batch % a2c.micro_batches:
        raise ConfigError("batch_size", f"{batch} does not split into a2c.micro_batches={a2c.micro_batches}")
    split = spec.mesh_shape[0] * spec.mesh_shape[1]  # data x fsdp: the batch axes
    if batch % split:
        raise ConfigError("batch_size", f"{batch} images do not divide over data x fsdp = {split} devices")
    captions = batch * a2c.samples_per_image
    if captions % (a2c.minibatches * a2c.micro_batches):
        raise ConfigError("batch_size", f"{captions} captions per rollout do not split into a2c.minibatches="
                                        f"{a2c.minibatches} x a2c.micro_batches={a2c.micro_batches}")
    rows = captions // (a2c.minibatches * a2c.micro_batches)
    if rows % split:
        raise ConfigError("batch_size", f"a micro-batch of {rows} captions does not divide over data x fsdp = "
                                        f"{split} devices (mesh {dict(zip(sharding.MESH_AXES, spec.mesh_shape))})")


def _check_paths(spec: RunSpec) -> None:
    """The folders the config names hold the models it needs, and the data sources exist."""
    from vlrm_jax.checkpoint import kinds

    model, reward = spec.model, spec.reward
    if model.source == "folders":
        _folder(model, "captioner", kinds.BLIP2_OPT)
        if reward.kind != "token_count":
            _folder(model, "itm", kinds.BLIP2_ITM)
        if model.ref_lm:
            _folder(model, "ref_lm")
        if reward.kind == "vlrm_rs":
            _folder(model, "clip", kinds.OPEN_CLIP)
    source = spec.eval.source
    if source and not source.startswith("tfds:") and not os.path.isdir(source):
        raise ConfigError("eval.source", f"{source!r} is no folder")
    source = spec.data.source
    if source != "random" and not source.startswith("tfds:") and "*" not in source and not os.path.exists(source):
        raise ConfigError("data.source", f"{source!r} does not exist")


def _folder(model: ModelConfig, field: str, kind: str | None = None) -> str:
    path = getattr(model, field)
    if not path:
        raise ConfigError(f"model.{field}", "no folder given")
    config = os.path.join(path, "config.json")
    if not os.path.isfile(config):
        raise ConfigError(f"model.{field}", f"{path!r} is not a model folder (no config.json)")
    if kind is not None:
        found = json.loads(Path(config).read_text()).get("kind")
        if found != kind:
            raise ConfigError(f"model.{field}", f"{path!r} holds a {found!r} model, expected {kind!r}")
    return path


def _mesh(mesh: MeshConfig, present: int, processes: int) -> tuple[int, ...]:
    """(data, fsdp, tensor) sizes. One process may use fewer devices than it has (the first
    ones); several processes must use every device, since each must hold part of the mesh."""
    sizes = dataclasses.asdict(mesh)
    fixed = int(np.prod([v for v in sizes.values() if v != -1]))
    total = present if -1 in sizes.values() else fixed
    if total > present or (processes > 1 and total != present):
        raise ConfigError("mesh", f"{sizes} needs {total} devices; {present} are present"
                                  + (f" over {processes} processes, and all must be used" if processes > 1 else ""))
    try:
        return sharding.mesh_shape(sizes, total)
    except ValueError as e:
        raise ConfigError("mesh", str(e)) from None


def _rules_table(rules) -> tuple:
    rules = tuple(tuple(r) if isinstance(r, (list, tuple)) else r for r in rules)
    try:
        sharding.check_rules(rules)
    except ValueError as e:
        raise ConfigError(RULES_KEY, str(e)) from None
    return tuple((name, tuple(t) if isinstance(t, list) else t) for name, t in rules)
