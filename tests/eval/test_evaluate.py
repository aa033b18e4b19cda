"""`vlrm_jax.evaluate` end to end with tiny models: on a mocked TFDS coco_captions and on a folder."""
import argparse
import json

import numpy as np

from tests.helpers import run_module

# `models` (tiny converted captioner and CLIP) comes from tests/eval/conftest.py.


def _args(models, out, **kw):
    base = dict(model=str(models / "cap"), clip=str(models / "clip"), dataset="tfds:coco_captions/test", data_dir=None,
                captions=None, out=str(out), batch_size=4, limit=None, center_crop=True, min_size=1, dtype=None,
                quiet=True)
    base.update(kw)
    return argparse.Namespace(**base)


def test_evaluate_on_mocked_coco_captions(models, tmp_path, mock_coco):
    from vlrm_jax.evaluate import run

    rows = run(_args(models, tmp_path))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["images"] == 11 and set(metrics["rows"]) == {"REF", "model"}
    for row in rows.values():
        assert 0 <= row["R@1"] <= row["R@5"] <= row["R@10"] <= 1 and 0 < row["MRR"] <= 1
    captions = [json.loads(line) for line in (tmp_path / "captions.jsonl").read_text().splitlines()]
    assert len(captions) == 11 and len({c["file"] for c in captions}) == 11

    # the same captions read back from the file give the same numbers (no captioner needed)
    again = run(_args(models, tmp_path / "again", model=None, captions=str(tmp_path / "captions.jsonl")))
    assert again["model"] == rows["model"]


def test_evaluate_cli_on_a_folder_with_reference_captions(models, tmp_path):
    from vlrm_jax.world.shapes import generate_world, write_world

    write_world(generate_world(seed=0, n_train=1, n_test=12, image_size=32), tmp_path / "world")
    (tmp_path / "world" / "test" / "broken.png").write_bytes(b"\x89PNG not really")
    proc = run_module("vlrm_jax.evaluate", "--model", str(models / "cap"), "--clip", str(models / "clip"),
                      "--dataset", str(tmp_path / "world" / "test"), "--out", str(tmp_path / "out"),
                      "--batch-size", "5", "--quiet")
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["images"] == 12 and sum(metrics["skipped"].values()) == 1
    assert "REF" in metrics["rows"] and "model" in proc.stdout
    # REF with one full description per image: its recall is computed over those 12 texts
    assert np.isfinite(metrics["rows"]["REF"]["MRR"])


def test_evaluate_needs_a_captioner_or_captions(models, tmp_path):
    proc = run_module("vlrm_jax.evaluate", "--clip", str(models / "clip"), "--dataset", str(tmp_path), check=False)
    assert proc.returncode == 2 and "--model or --captions" in proc.stderr
