"""`python -m vlrm_jax.caption` on a folder of real image files, broken ones included."""
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from tests import factories as F
from tests.helpers import convert_in_process, run_module


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("caption_cli")
    F.save_tiny_blip2(str(root / "hf"), seed=2, eos_scale=2.0)
    convert_in_process("convert.blip2", "--src", str(root / "hf"), "--dst", str(root / "model"), "--quiet")
    return str(root / "model")


def _caption(model, images, out, *flags):
    return run_module("vlrm_jax.caption", "--model", model, "--images", str(images), "--out", str(out),
                      "--batch-size", "4", "--max-new-tokens", "6", "--min-new-tokens", "2", "--num-beams", "2",
                      "--quiet", *flags)


def test_caption_cli_skips_broken_files_and_captions_the_rest(tmp_path, model):
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    good = {"a.jpg": (640, 480), "b.png": (300, 300), "sub/c.jpg": (120, 500), "d.png": (50, 70), "e.jpg": (333, 211)}
    for name, (w, h) in good.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(images / name)
    (images / "empty.jpg").write_bytes(b"")
    (images / "text.jpg").write_text("not an image")
    full = (images / "a.jpg").read_bytes()
    (images / "truncated.jpg").write_bytes(full[: len(full) // 3])
    out = tmp_path / "captions.jsonl"
    proc = _caption(model, images, out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["file"] for r in rows) == sorted(good)  # relative to --images, as evaluate keys them
    assert all(isinstance(r["caption"], str) and 2 <= len(r["token_ids"]) <= 6 for r in rows)
    assert "captioned 5 of 8 images" in proc.stdout
    assert "skipped 3 of 8" in proc.stdout and "empty=1" in proc.stdout and "no minimum size" in proc.stdout
    # the CLI's tokens are the library's tokens for the same preprocessed images
    from vlrm_jax import Captioner
    from vlrm_jax.data.preprocess import Blip2Preprocessor

    cap = Captioner.load(model)
    first = sorted(rows, key=lambda r: r["file"])[0]
    pixels = Blip2Preprocessor(28, center_crop=True).batch([Image.open(images / first["file"]).convert("RGB")])
    ids = cap.generate(pixels,
                       max_new_tokens=6, min_new_tokens=2, num_beams=2, no_repeat_ngram_size=2)[0]
    assert ids[ids != 1].tolist() == first["token_ids"]


def test_caption_cli_names_a_missing_folder(tmp_path):
    proc = run_module("vlrm_jax.caption", "--model", str(tmp_path), "--images", str(tmp_path / "nope"),
                      "--out", str(tmp_path / "o.jsonl"), check=False)
    assert proc.returncode == 2 and "nope" in proc.stderr


def test_caption_cli_captions_tiny_images_unless_a_minimum_size_is_asked(tmp_path, model):
    images = tmp_path / "small"
    images.mkdir()
    rng = np.random.default_rng(1)
    sizes = {"dot.png": (1, 1), "icon.png": (8, 5), "thumb.jpg": (20, 40), "photo.jpg": (50, 70)}
    for name, (w, h) in sizes.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(images / name)
    out = tmp_path / "all.jsonl"
    proc = _caption(model, images, out)
    assert sorted(json.loads(line)["file"] for line in out.read_text().splitlines()) == sorted(sizes)
    assert "captioned 4 of 4 images" in proc.stdout and "skipped 0 of 4" in proc.stdout
    proc = _caption(model, images, tmp_path / "big.jsonl", "--min-size", "20")
    kept = [json.loads(line)["file"] for line in (tmp_path / "big.jsonl").read_text().splitlines()]
    assert sorted(kept) == ["photo.jpg", "thumb.jpg"]
    assert "captioned 2 of 4 images" in proc.stdout and "too_small=2" in proc.stdout
    assert "minimum size 20 px (--min-size)" in proc.stdout
    bad = run_module("vlrm_jax.caption", "--model", model, "--images", str(images), "--out", str(out),
                     "--min-size", "0", check=False)
    assert bad.returncode == 2 and "--min-size" in bad.stderr


def test_a_folder_without_tokenizer_fails_before_generating(tmp_path, model):
    bare = tmp_path / "bare"
    shutil.copytree(model, bare)
    for name in os.listdir(bare):
        if name.startswith(("tokenizer", "vocab", "merges", "special_tokens")):
            os.remove(bare / name)
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(images / "a.png")
    proc = run_module("vlrm_jax.caption", "--model", str(bare), "--images", str(images), "--out",
                      str(tmp_path / "o.jsonl"), check=False)
    assert proc.returncode == 2 and "has no tokenizer" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o.jsonl").exists() or (tmp_path / "o.jsonl").read_text() == ""
