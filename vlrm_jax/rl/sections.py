"""The run config's sections as typed records that check themselves, and the one walk that reads a
config section into its record.

Each section of a run config (configs/*.py, keys in vlrm_jax/rl/defaults.py) maps one-to-one onto
a frozen dataclass: the loop's keys (top level) onto `loop.LoopConfig`, `mesh` onto `MeshConfig`,
`distributed` onto `DistributedConfig`, `model` onto `ModelConfig`, `rollout` onto
`GenerationConfig`, `reward` onto `RewardConfig`, `a2c` onto `A2CConfig`, `value` onto
`ValueConfig`, `data` onto `DataConfig` and `eval` onto `EvalConfig`. `typed` reads a section:
an unknown key, a value of the wrong type or one the record refuses raises `ConfigError` naming
the dotted key. What ties sections together (the batch against the mesh and the micro-batches,
folders on disk) is checked in vlrm_jax/rl/run.py.
"""
from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any, Mapping

from vlrm_jax import sharding

MODEL_SOURCES = ("folders", "random")
SHARE_CHOICES = ("auto", "yes", "no")
REWARDS = ("vlrm", "vlrm_rs", "token_count")
CPU_COLLECTIVES = ("gloo", "mpi", "none")


class ConfigError(ValueError):
    """A bad config value; `key` its dotted key. A record raises it with its field's name and
    `typed` puts the section in front."""

    def __init__(self, key: str, why: str):
        super().__init__(f"config key {key}: {why}")
        self.key, self.why = key, why


def one_of(name: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(name, f"{value!r}: expected one of {allowed}")


def at_least(record, minimum: int, *names: str) -> None:
    for name in names:
        if getattr(record, name) < minimum:
            raise ConfigError(name, f"must be >= {minimum}, got {getattr(record, name)!r}")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh (data, fsdp, tensor): one size may be -1, the devices the others leave."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1

    def __post_init__(self):
        sizes = dataclasses.asdict(self)
        for name, value in sizes.items():
            if not (value == -1 or value >= 1):
                raise ConfigError(name, f"expected an integer >= 1 or -1 (the rest of the devices), got {value!r}")
        if list(sizes.values()).count(-1) > 1:
            raise ConfigError("", f"{sizes}: at most one size may be -1")


# MeshConfig's fields are the mesh axes sharding knows, so an unknown axis is an unknown key
assert tuple(f.name for f in dataclasses.fields(MeshConfig)) == sharding.MESH_AXES


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """Several processes: enabled with empty fields lets jax detect the cluster; otherwise every
    process gets the coordinator's host:port, the process count and its own id."""

    enabled: bool = False
    coordinator_address: str = ""
    num_processes: int = 0
    process_id: int = -1
    cpu_collectives: str = "gloo"
    timeout_s: int = 300

    def __post_init__(self):
        at_least(self, 0, "num_processes")
        at_least(self, -1, "process_id")
        at_least(self, 1, "timeout_s")
        explicit = [bool(self.coordinator_address), self.num_processes > 0, self.process_id >= 0]
        if any(explicit) and not all(explicit):
            raise ConfigError("", "give coordinator_address, num_processes and process_id together, or none of them "
                                  "(jax then detects the cluster)")
        if all(explicit) and self.process_id >= self.num_processes:
            raise ConfigError("process_id", f"{self.process_id} not below num_processes={self.num_processes}")
        one_of("cpu_collectives", self.cpu_collectives, CPU_COLLECTIVES)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Where the models come from. source "folders": converted folders (ref_lm "": the captioner's
    own OPT); "random": a tiny random captioner of the sizes below written into the workdir."""

    source: str = "folders"
    captioner: str = ""
    itm: str = ""
    ref_lm: str = ""
    clip: str = ""
    dtype: str = "bfloat16"
    share_trunk: str = "auto"
    share_ref_lm: str = "auto"
    # source="random" only: the tiny captioner's sizes
    seed: int = 0
    vocab_size: int = 40
    image_size: int = 14
    patch_size: int = 7
    width: int = 16
    vision_layers: int = 1
    qformer_layers: int = 2
    opt_layers: int = 2
    num_query_tokens: int = 3
    init_std: float = 0.2

    def __post_init__(self):
        one_of("source", self.source, MODEL_SOURCES)
        one_of("share_trunk", self.share_trunk, SHARE_CHOICES)
        one_of("share_ref_lm", self.share_ref_lm, SHARE_CHOICES)


@dataclasses.dataclass(frozen=True)
class RewardWeights:
    """sim scales the ITM term (with Phi inside it for vlrm_rs); rs is Phi's weight inside it."""

    sim: float = 1.0
    rs: float = 0.3

    def __post_init__(self):
        for name in ("sim", "rs"):
            if not getattr(self, name) >= 0:
                raise ConfigError(name, f"expected a number >= 0, got {getattr(self, name)!r}")


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    kind: str = "vlrm"
    target: int = 0  # token_count: the token id that scores +1
    bad_phrases: str = ""  # "": the list shipped in vlrm_jax/assets
    exempt_words: str = ""
    extra_exempt_words: tuple[str, ...] = ()
    itm_max_length: int = 64
    weights: RewardWeights = RewardWeights()

    def __post_init__(self):
        one_of("kind", self.kind, REWARDS)
        at_least(self, 1, "itm_max_length")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """source: a folder, tar shards ("shards/*.tar"), "tfds:NAME/SPLIT" or "random"."""

    source: str = ""
    workers: int = 16
    min_side: int = 32  # smaller images are skipped (and counted)

    def __post_init__(self):
        at_least(self, 1, "workers")
        at_least(self, 0, "min_side")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Held-out CLIP Recall: source a folder or "tfds:coco_captions/test", ranked by clip."""

    source: str = ""
    clip: str = ""
    batch_size: int = 64
    limit: int = 0  # 0: every image
    no_repeat_ngram_size: int = 2  # the paper's beam bans repeated bigrams; 0 lifts the ban

    def __post_init__(self):
        at_least(self, 1, "batch_size")
        at_least(self, 0, "limit", "no_repeat_ngram_size")
        if self.source and not self.clip:
            raise ConfigError("clip", "evaluation needs the OpenCLIP folder that ranks the captions")


# ----------------------------------------------------------------------------------------------
def typed(cls, section: Mapping[str, Any], prefix: str, fixed: Mapping[str, Any] | None = None):
    """`cls` built from a config section: every key must be a field of `cls` and hold a value of
    the field's type (ints are accepted for floats, lists for tuples); a nested dataclass field
    reads its own sub-section. `fixed`: fields set by the caller, not by the config. Raises
    ConfigError naming `prefix.key` (just `key` for the top level, prefix "")."""
    def key(name: str) -> str:
        return f"{prefix}.{name}" if prefix else name

    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in section.items():
        if name not in fields:
            raise ConfigError(key(name), f"unknown; expected one of {sorted(fields)}")
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            if not hasattr(value, "items"):  # a dict or a ConfigDict (which is no Mapping)
                raise ConfigError(key(name), f"expected a section (a mapping of {hint.__name__}'s fields), got {value!r}")
            values[name] = typed(hint, value, key(name))
            continue
        if not _is(value, hint):
            raise ConfigError(key(name), f"expected {_describe(hint)}, got {value!r}")
        values[name] = _coerce(value, hint)
    values.update(fixed or {})
    try:
        return cls(**values)
    except ConfigError as e:  # the record named its field
        raise ConfigError(key(e.key) if e.key else (prefix or "config"), e.why) from None
    except (TypeError, ValueError) as e:
        # a record that raises ValueError: the field its message names as a word (estimator is
        # not kl_estimator)
        named = next((n for n in values if re.search(rf"\b{n}\b", str(e))), "")
        raise ConfigError(key(named) if named else (prefix or "config"), str(e)) from None


def _is(value, hint) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_is(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is tuple:
        item = args[0] if args else typing.Any
        return isinstance(value, (tuple, list)) and all(item is typing.Any or _is(v, item) for v in value)
    return True  # anything else: the record checks it itself


def _coerce(value, hint):
    if hint is float and isinstance(value, int):
        return float(value)
    if typing.get_origin(hint) is tuple:
        return tuple(value)
    return value


def _describe(hint) -> str:
    names = {bool: "True or False", int: "an integer", float: "a number", str: "a string", type(None): "None"}
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        return "a tuple"
    return names.get(hint, str(hint))
