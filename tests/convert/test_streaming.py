"""Conversion streams: parameters are produced one at a time and written in groups, and a group's
arrays are gone before the next parameter is converted, so peak memory is about one group."""
import weakref

import jax
import numpy as np
import pytest

from convert.sources import TensorSource
from convert.table import LINEAR, ConversionError, Rule, expand, iter_torch_to_flax
from vlrm_jax.checkpoint.model_dir import load_params, save_params

MIB = 1 << 20


def test_written_groups_are_released_before_the_next_parameter_is_made(tmp_path):
    refs = []

    def stream():
        for i in range(6):
            if i % 2 == 0:  # groups of two 1 MiB arrays: every earlier group was written and dropped
                alive = [j for j, r in enumerate(refs) if r() is not None]
                assert not alive, f"parameters {alive} still alive before parameter {i} is made"
            a = np.full((256, 1024), i, np.float32)
            refs.append(weakref.ref(a))
            yield ("p", str(i)), a
            del a

    save_params(str(tmp_path / "params"), stream(), max_shard_bytes=2 * MIB)
    assert len(list((tmp_path / "params").iterdir())) == 3
    abstract = {("p", str(i)): jax.ShapeDtypeStruct((256, 1024), np.float32) for i in range(6)}
    restored = load_params(str(tmp_path), abstract)
    for i in range(6):
        np.testing.assert_array_equal(np.asarray(restored[("p", str(i))]), np.full((256, 1024), i, np.float32))


def _source(tensors):
    return TensorSource({k: (lambda v=v: v) for k, v in tensors.items()}, {k: v.shape for k, v in tensors.items()}, "mem")


def test_stacked_parameters_come_out_whole_and_in_model_order():
    rng = np.random.default_rng(0)
    tensors = {f"l.{i}.w": rng.normal(size=(3, 2)).astype(np.float32) for i in range(4)}
    tensors["head.w"] = rng.normal(size=(5, 3)).astype(np.float32)
    entries = expand([Rule("l.{i}.w", "layers.kernel", LINEAR, layers="l"), Rule("head.w", "head.kernel", LINEAR)],
                     {"l": range(4)})
    abstract = {("head", "kernel"): jax.ShapeDtypeStruct((3, 5), np.float32),
                ("layers", "kernel"): jax.ShapeDtypeStruct((4, 2, 3), np.float32)}
    out = list(iter_torch_to_flax(_source(tensors), entries, abstract, progress=False))
    assert [p for p, _ in out] == list(abstract)
    np.testing.assert_array_equal(out[1][1], np.stack([tensors[f"l.{i}.w"].T for i in range(4)]))


def test_a_layer_no_rule_produces_is_named_before_anything_is_read():
    tensors = {f"l.{i}.w": np.zeros((3, 2), np.float32) for i in range(3)}
    entries = expand([Rule("l.{i}.w", "layers.kernel", LINEAR, layers="l")], {"l": range(3)})
    abstract = {("layers", "kernel"): jax.ShapeDtypeStruct((4, 2, 3), np.float32)}  # 4 layers, 3 rules
    with pytest.raises(ConversionError, match="layers.kernel"):
        next(iter_torch_to_flax(_source(tensors), entries, abstract, progress=False))
