"""The run config's sections read into typed records (vlrm_jax/rl/sections.py): every key of the
paper's defaults is a field of its section's record, and a value of the wrong type is refused
with its dotted key before anything is built."""
import dataclasses

import pytest

from tests.rl.test_faults import _cfg
from vlrm_jax.rl import run
from vlrm_jax.rl.defaults import base_config
from vlrm_jax.rl.loop import LoopConfig
from vlrm_jax.rl.sections import ConfigError, RewardConfig, typed


def _tiny(**overrides):
    return _cfg("runs/x", **overrides)


def test_every_default_key_is_a_field_of_its_record():
    cfg = base_config()
    for name, record in run.SECTIONS.items():
        fields = {f.name for f in dataclasses.fields(record)}
        assert set(cfg[name]) <= fields, (name, set(cfg[name]) - fields)
    top = {k for k in cfg if k not in run.SECTIONS and k != run.RULES_KEY}
    assert top <= {f.name for f in dataclasses.fields(LoopConfig)}


def test_validate_gives_one_record_per_section():
    spec = run.validate(_tiny())
    for name, record in run.SECTIONS.items():
        assert isinstance(getattr(spec, name), record), name
    assert spec.loop.batch_size == 16 and spec.seed == 0 and spec.mesh_shape == (1, 1, 1)
    assert spec.rollout.do_sample  # the rollout always samples
    assert spec.model.width == 16 and spec.reward.weights.sim == 1.0


@pytest.mark.parametrize("key, value, why", [
    ("data.source", 3, "expected a string, got 3"),
    ("model.width", "16", "expected an integer, got '16'"),
    ("distributed.enabled", "yes", "expected True or False, got 'yes'"),
    ("reward.weights.rs", "x", "expected a number, got 'x'"),
    ("reward.extra_exempt_words", ("and", 3), "expected a tuple"),
    ("mesh.fsdp", True, "expected an integer, got True"),
    ("seed", 1.5, "expected an integer, got 1.5"),
])
def test_a_value_of_the_wrong_type_is_named_by_its_dotted_key(key, value, why):
    """A config file may build a section with any types (ml_collections then keeps them); the
    walk refuses them. From the command line ml_collections itself refuses a change of type."""
    *section, name = key.split(".")
    record = run.SECTIONS[section[0]] if section else LoopConfig
    prefix = section[0] if section else ""
    fields = {name: value} if len(section) < 2 else {section[1]: {name: value}}
    fixed = {} if section else {"workdir": "w", "total_steps": 1}
    with pytest.raises(ConfigError) as e:
        typed(record, fields, prefix, fixed)
    assert e.value.key == key and why in str(e.value), str(e.value)


def test_a_section_given_as_a_value_is_named_by_its_key():
    with pytest.raises(ConfigError) as e:
        typed(run.SECTIONS["reward"], {"weights": 3}, "reward")
    assert e.value.key == "reward.weights" and "expected a section" in str(e.value), str(e.value)


@pytest.mark.parametrize("key, value, why", [
    ("eval.limit", -1, "must be >= 0, got -1"),
    ("data.workers", 0, "must be >= 1, got 0"),
    ("log_every", 0, "must be >= 1, got 0"),
    ("model.share_trunk", "maybe", "'maybe': expected one of ('auto', 'yes', 'no')"),
    ("distributed.process_id", 2, "give coordinator_address, num_processes and process_id together"),
])
def test_a_value_a_record_refuses_is_named_by_its_key(key, value, why):
    with pytest.raises(ConfigError) as e:
        run.validate(_tiny(**{key: value}))
    assert why in str(e.value), str(e.value)
    assert e.value.key == (key if key != "distributed.process_id" else "distributed")


def test_ints_stand_for_floats_and_lists_for_tuples():
    reward = typed(RewardConfig, {"extra_exempt_words": ["and", "small"], "weights": {"sim": 2}}, "reward")
    assert reward.extra_exempt_words == ("and", "small")
    assert reward.weights.sim == 2.0 and isinstance(reward.weights.sim, float)
    with pytest.raises(ConfigError, match="config key reward.weights.simm: unknown"):
        typed(RewardConfig, {"weights": {"simm": 1.0}}, "reward")
