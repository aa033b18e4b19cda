"""A tiny run's policy exported as a captioner folder: the trained parameters moved, the frozen
ones did not, `convert.to_hf` loads it into transformers with strict keys and transformers'
greedy captions equal the project's; `convert.policy_weights` writes the trained tensors alone."""
import dataclasses

import numpy as np
import pytest

from tests.helpers import hf_new_tokens, run_module


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from vlrm_jax.config_utils import load_config
    from vlrm_jax.rl import loop, run

    workdir = tmp_path_factory.mktemp("tiny_run")
    cfg = load_config("tiny")
    cfg.workdir, cfg.total_steps, cfg.mesh.data = str(workdir), 3, 1
    step, stream, loop_cfg, hooks, captioner_dir = run.build(cfg)
    run.save_run_config(cfg, captioner_dir)
    loop.train(step, stream, dataclasses.replace(loop_cfg, progress=False), cfg.seed, hooks)
    return workdir, captioner_dir


def test_exported_policy_loads_in_transformers_with_equal_greedy_captions(tiny_run, tmp_path):
    from safetensors.numpy import load_file
    from transformers import Blip2ForConditionalGeneration

    from vlrm_jax.api import Captioner
    from vlrm_jax.models.build import flat_params

    workdir, base_dir = tiny_run
    run_module("vlrm_jax.rl.export", "--workdir", str(workdir), "--dst", str(tmp_path / "policy"))
    base = flat_params(Captioner.load(base_dir).module)
    policy = Captioner.load(str(tmp_path / "policy"))
    for path, value in flat_params(policy.module).items():
        same = np.array_equal(np.asarray(value), np.asarray(base[path]))
        assert same == (path[0] not in ("query_tokens", "qformer", "language_projection")), path

    run_module("convert.to_hf", "--src", str(tmp_path / "policy"), "--dst", str(tmp_path / "hf"))
    hf, info = Blip2ForConditionalGeneration.from_pretrained(str(tmp_path / "hf"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    pixels = np.random.default_rng(7).normal(size=(6, 14, 14, 3)).astype(np.float32)
    ours = policy.generate(pixels, max_new_tokens=8)
    np.testing.assert_array_equal(ours, hf_new_tokens(hf.eval(), pixels, max_new_tokens=8, do_sample=False))

    run_module("convert.policy_weights", "--src", str(tmp_path / "policy"), "--dst", str(tmp_path / "w.safetensors"))
    weights = load_file(str(tmp_path / "w.safetensors"))
    assert {k.split(".")[0] for k in weights} == {"query_tokens", "qformer", "language_projection"}
    np.testing.assert_array_equal(weights["query_tokens"], hf.state_dict()["query_tokens"].numpy())
