"""`convert.to_hf` on a folder that never came from transformers: the shapes world's captioner
(no transformers config, no processor files, a tokenizer that fills the model's vocabulary) comes
out as a transformers folder whose greedy and beam captions equal the project's on the same
pixels, and that `AutoProcessor` loads, preprocesses as the project does and prompts with the
image placeholders transformers' BLIP2 expects. Bad sources are one `error:` line with status 2;
orbax's INFO lines only show with --verbose."""
import logging
import os
import shutil

import numpy as np
import pytest

from tests.helpers import REPO, hf_new_tokens, run_module

SHAPES_CAPTIONER = os.path.join(REPO, "tests", "assets", "shapes_world", "models", "captioner")


@pytest.fixture(scope="module")
def shapes_hf(tmp_path_factory):
    out = tmp_path_factory.mktemp("to_hf") / "shapes"
    run_module("convert.to_hf", "--src", SHAPES_CAPTIONER, "--dst", str(out))
    return out


@pytest.fixture(scope="module")
def models(shapes_hf):
    from transformers import Blip2ForConditionalGeneration

    from vlrm_jax.api import Captioner

    hf, info = Blip2ForConditionalGeneration.from_pretrained(str(shapes_hf), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return Captioner.load(SHAPES_CAPTIONER), hf.eval()


def _images(n: int):
    from PIL import Image

    rng = np.random.default_rng(3)
    sizes = [(80, 50), (41, 97), (63, 63), (200, 120)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes[:n]]


def test_shapes_world_captioner_generates_in_transformers_as_in_the_project(models):
    ours, hf = models
    size = ours.config.vision.image_size
    pixels = np.random.default_rng(7).normal(size=(4, size, size, 3)).astype(np.float32)
    greedy = dict(max_new_tokens=12)
    np.testing.assert_array_equal(ours.generate(pixels, **greedy), hf_new_tokens(hf, pixels, do_sample=False, **greedy))
    beam = dict(max_new_tokens=12, num_beams=3, no_repeat_ngram_size=2)
    np.testing.assert_array_equal(ours.generate(pixels, **beam), hf_new_tokens(hf, pixels, do_sample=False, **beam))


def test_autoprocessor_preprocesses_as_the_project_and_prompts_with_the_image_tokens(shapes_hf, models):
    import torch
    from transformers import AutoProcessor

    from vlrm_jax.data.preprocess import blip2_pixel_values

    ours, hf = models
    images = _images(4)
    # The PIL backend is the processor the project reproduces (vlrm_jax/data/preprocess.py); the
    # default torchvision backend's antialiased bicubic resize rounds differently (about one uint8
    # level, 0.015 after normalisation at this size), so it is not compared here.
    processor = AutoProcessor.from_pretrained(str(shapes_hf), backend="pil")
    theirs = processor(images=images, return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)
    project = blip2_pixel_values(images, size=ours.config.vision.image_size)
    np.testing.assert_allclose(theirs, project, atol=1e-4, rtol=0)

    inputs = processor(images=images, text=[""] * len(images), return_tensors="pt")
    q, config = hf.config.num_query_tokens, hf.config
    assert inputs["input_ids"].tolist() == [[config.image_token_index] * q + [config.text_config.bos_token_id]] * 4
    with torch.no_grad():
        prompted = hf.generate(**inputs, max_new_tokens=8, do_sample=False)[:, q + 1:].numpy()
    np.testing.assert_array_equal(prompted, ours.generate(project, max_new_tokens=8)[:, :prompted.shape[1]])


def _without_tokenizer(tmp_path):
    folder = tmp_path / "no_tokenizer"
    shutil.copytree(SHAPES_CAPTIONER, folder, ignore=shutil.ignore_patterns("tokenizer*"))
    return folder


def test_bad_sources_print_one_error_line_and_exit_2(tmp_path, capsys):
    from convert import cli, to_hf

    (tmp_path / "exists").mkdir()
    cases = {
        "not a vlrm_jax model folder": ["--src", str(tmp_path / "missing")],
        "without a tokenizer": ["--src", str(_without_tokenizer(tmp_path))],
        "already exists (pass --overwrite": ["--src", SHAPES_CAPTIONER, "--dst", str(tmp_path / "exists")],
    }
    for message, args in cases.items():
        args = args if "--dst" in args else [*args, "--dst", str(tmp_path / "out")]
        with pytest.raises(SystemExit) as exit_:
            cli.run(to_hf.main, args)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()
    proc = run_module("convert.to_hf", "--src", str(tmp_path / "missing"), "--dst", str(tmp_path / "out"), check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr


def test_orbax_info_lines_show_with_verbose_only(tmp_path, caplog, absl_verbosity):
    from convert import to_hf

    caplog.set_level(logging.INFO)  # logging already at INFO, as another tool or a notebook leaves it
    to_hf.main(["--src", SHAPES_CAPTIONER, "--dst", str(tmp_path / "quiet")])
    assert not [r for r in caplog.records if r.name == "absl"]
    to_hf.main(["--src", SHAPES_CAPTIONER, "--dst", str(tmp_path / "verbose"), "--verbose"])
    assert any("checkpoint" in r.getMessage() for r in caplog.records if r.name == "absl")
