"""A tiny run's policy exported as a captioner folder: the trained parameters moved, the frozen
ones did not, `convert.to_hf` loads it into transformers with strict keys and transformers'
greedy captions equal the project's; `convert.policy_weights` writes the trained tensors alone.
The folder is complete (tokenizer, processor files, transformers config) and captions; bad
arguments are one `error:` line with status 2; orbax's INFO lines only show with --verbose."""
import dataclasses
import json
import logging
import os

import numpy as np
import pytest

from tests.helpers import hf_new_tokens, run_module


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from vlrm_jax.config_utils import load_config
    from vlrm_jax.rl import loop, run, run_config

    workdir = tmp_path_factory.mktemp("tiny_run")
    cfg = load_config("tiny")
    cfg.workdir, cfg.total_steps, cfg.mesh.data = str(workdir), 3, 1
    step, stream, loop_cfg, hooks, captioner_dir = run.build(cfg)
    run_config.save_run_config(cfg, captioner_dir)
    loop.train(step, stream, dataclasses.replace(loop_cfg, progress=False), hooks)
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


COMPLETE_FOLDER = {"config.json", "params", "hf_config.json", "tokenizer.json", "tokenizer_config.json",
                   "preprocessor_config.json", "processor_config.json"}


def test_random_captioner_folder_is_complete_with_a_tokenizer_of_its_vocabulary(tmp_path):
    from transformers import AutoProcessor, AutoTokenizer

    from vlrm_jax.config_utils import load_config
    from vlrm_jax.rl import run

    m = load_config("tiny").model
    folder = run.write_random_captioner(m, tmp_path / "captioner")
    assert COMPLETE_FOLDER <= set(os.listdir(folder))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert len(tokenizer) == m.vocab_size
    image_token = json.loads((tmp_path / "captioner" / "config.json").read_text())["model"]["image_token_index"]
    assert tokenizer.convert_ids_to_tokens(image_token) == "<image>"
    assert json.loads((tmp_path / "captioner" / "hf_config.json").read_text())["image_token_index"] == image_token
    assert tokenizer("a red circle").input_ids[0] == tokenizer.bos_token_id  # OPT prepends BOS
    assert tokenizer.decode(tokenizer("a red circle").input_ids, skip_special_tokens=True) == "a red circle"
    processor = AutoProcessor.from_pretrained(folder)
    assert processor.num_query_tokens == m.num_query_tokens
    assert processor.image_processor.size["height"] == m.image_size


def test_exported_folder_is_complete_and_captions(tiny_run, tmp_path):
    from PIL import Image

    from vlrm_jax.api import Captioner

    workdir, _ = tiny_run
    dst = tmp_path / "policy"
    assert _export_main("--workdir", str(workdir), "--dst", str(dst)) == 0
    assert COMPLETE_FOLDER <= set(os.listdir(dst))
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (20 + i, 17, 3), dtype=np.uint8)).save(images / f"{i}.png")
    captions = Captioner.load(str(dst)).caption([Image.open(images / "0.png")], max_new_tokens=4)
    assert len(captions) == 1 and captions[0]
    out = tmp_path / "captions.jsonl"
    run_module("vlrm_jax.caption", "--model", str(dst), "--images", str(images), "--out", str(out),
               "--max-new-tokens", "4", "--num-beams", "1", "--min-new-tokens", "0", "--quiet")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and all(r["caption"] for r in rows)


def _export_main(*args) -> int:
    from vlrm_jax.rl import export

    return export.main(list(args))


def test_bad_arguments_print_one_error_line_and_exit_2(tiny_run, tmp_path, capsys):
    workdir, _ = tiny_run
    (tmp_path / "exists").mkdir()
    (tmp_path / "no_checkpoints").mkdir()
    (tmp_path / "no_checkpoints" / "run_config.json").write_text((workdir / "run_config.json").read_text())
    cases = {
        "no such workdir": ["--workdir", str(tmp_path / "missing")],
        "not a training workdir": ["--workdir", str(tmp_path / "exists")],
        "no checkpoints": ["--workdir", str(tmp_path / "no_checkpoints")],
        "no checkpoint of step 99": ["--workdir", str(workdir), "--step", "99"],
        "already exists (pass --overwrite": ["--workdir", str(workdir), "--dst", str(tmp_path / "exists")],
    }
    for message, args in cases.items():
        args = args if "--dst" in args else [*args, "--dst", str(tmp_path / "out")]
        assert _export_main(*args) == 2, message
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()
    proc = run_module("vlrm_jax.rl.export", "--workdir", str(tmp_path / "missing"), "--dst", str(tmp_path / "out"),
                      check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr


def test_orbax_info_lines_show_with_verbose_only(tiny_run, tmp_path, caplog, absl_verbosity):
    workdir, _ = tiny_run
    caplog.set_level(logging.INFO)  # logging already at INFO, as another tool or a notebook leaves it
    assert _export_main("--workdir", str(workdir), "--dst", str(tmp_path / "quiet")) == 0
    assert not [r for r in caplog.records if r.name == "absl"]
    assert _export_main("--workdir", str(workdir), "--dst", str(tmp_path / "verbose"), "--verbose") == 0
    assert any("checkpoint" in r.getMessage() for r in caplog.records if r.name == "absl")
