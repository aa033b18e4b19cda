"""`python -m vlrm_jax.caption` on a folder of real image files, broken ones included."""
import json

import numpy as np
from PIL import Image

from tests import factories as F
from tests.helpers import run_module


def test_caption_cli_skips_broken_files_and_captions_the_rest(tmp_path):
    F.save_tiny_blip2(str(tmp_path / "hf"), seed=2, eos_scale=2.0)
    run_module("convert.blip2", "--src", str(tmp_path / "hf"), "--dst", str(tmp_path / "model"), "--quiet")
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
    proc = run_module("vlrm_jax.caption", "--model", str(tmp_path / "model"), "--images", str(images),
                      "--out", str(out), "--batch-size", "4", "--max-new-tokens", "6", "--min-new-tokens", "2",
                      "--num-beams", "2", "--quiet")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["file"].split("images/")[1] for r in rows) == sorted(good)
    assert all(isinstance(r["caption"], str) and 2 <= len(r["token_ids"]) <= 6 for r in rows)
    assert "captioned 5 of 8 images" in proc.stdout
    assert "skipped 3 of 8" in proc.stdout and "empty=1" in proc.stdout
    # the CLI's tokens are the library's tokens for the same preprocessed images
    from vlrm_jax import Captioner
    from vlrm_jax.data.preprocess import blip2_pixel_values

    cap = Captioner.load(str(tmp_path / "model"))
    first = sorted(rows, key=lambda r: r["file"])[0]
    ids = cap.generate(blip2_pixel_values([Image.open(first["file"]).convert("RGB")], size=28),
                       max_new_tokens=6, min_new_tokens=2, num_beams=2, no_repeat_ngram_size=2)[0]
    assert ids[ids != 1].tolist() == first["token_ids"]


def test_caption_cli_names_a_missing_folder(tmp_path):
    proc = run_module("vlrm_jax.caption", "--model", str(tmp_path), "--images", str(tmp_path / "nope"),
                      "--out", str(tmp_path / "o.jsonl"), check=False)
    assert proc.returncode == 2 and "nope" in proc.stderr
