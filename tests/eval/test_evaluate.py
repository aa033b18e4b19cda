"""`vlrm_jax.evaluate` end to end with tiny models: on a mocked TFDS coco_captions and on a folder."""
import argparse
import json

import numpy as np
import pytest

from tests.helpers import run_module

# `models` (tiny converted captioner and CLIP) comes from tests/eval/conftest.py.


def _args(models, out, **kw):
    base = dict(model=str(models / "cap"), clip=str(models / "clip"), dataset="tfds:coco_captions/test", data_dir=None,
                captions=None, out=str(out), batch_size=4, limit=None, center_crop=True, min_size=1, dtype=None,
                quiet=True, verbose=False, compare=None, retriever=None, clipscore_prefix=None,
                no_repeat_ngram_size=2)
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
    # (but whether a caption stopped at the length limit is known only where it was generated)
    assert again["model"] == {k: v for k, v in rows["model"].items() if k != "at_length_limit"}


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
    assert proc.returncode == 2 and "one of --model, --captions or --compare" in proc.stderr


COCO_METRICS = {"R@1", "R@5", "R@10", "MRR", "mean_rank", "retriever_R@1", "retriever_R@5", "retriever_R@10",
                "retriever_MRR", "clipscore", "refclipscore", "bleu4", "meteor", "rouge_l", "cider", "chair_s",
                "chair_i", "coverage", "length", "vocabulary", "distinct_1", "distinct_2", "repeated_content_word",
                "at_length_limit", "bad_phrase"}


def test_every_metric_on_mocked_coco_with_a_second_retriever(models, tmp_path, mock_coco):
    """One command: the paper's recall, the ITC retriever's, CLIPScore, pycocoevalcap's metrics,
    CHAIR on the annotated objects and the statistics, in the terminal, metrics.json and metrics.md."""
    from vlrm_jax.eval.reference_metrics import reference_scores
    from vlrm_jax.evaluate import main

    out = tmp_path / "out"
    assert main(["--model", str(models / "cap"), "--clip", str(models / "clip"), "--retriever", str(models / "itm"),
                 "--dataset", "tfds:coco_captions/test", "--out", str(out), "--batch-size", "4", "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    model, ref = metrics["rows"]["model"], metrics["rows"]["REF"]
    assert set(model) == COCO_METRICS
    # REF: the references scored where that means something (no reference metrics of themselves)
    assert {"R@1", "retriever_R@1", "clipscore", "chair_i", "length"} <= set(ref)
    assert not {"bleu4", "cider", "refclipscore", "at_length_limit"} & set(ref)
    assert metrics["retriever"] == {"folder": str(models / "itm"), "kind": "blip2_itm"}
    # the reference metrics are pycocoevalcap's on the captions written beside them
    captions = [json.loads(line)["caption"] for line in (out / "captions.jsonl").read_text().splitlines()]
    refs = [[f"caption {j} of image {1000 + k}" for j in range(5)] for k in range(11)]
    again = reference_scores(captions, refs).scores
    assert {k: model[k] for k in again} == again
    table = (out / "metrics.md").read_text()
    for name in COCO_METRICS:
        assert f"| {name} |" in table


@pytest.mark.slow  # captions two models' images and runs pycocoevalcap's JVMs twice
def test_compare_writes_one_table_and_the_figure(models, tmp_path, mock_coco, capsys, monkeypatch):
    from vlrm_jax.eval import clip_eval
    from vlrm_jax.evaluate import main

    embedded, embed = [], clip_eval.embed_texts
    monkeypatch.setattr(clip_eval, "embed_texts", lambda clip, texts: embedded.append(tuple(texts)) or embed(clip, texts))

    first = tmp_path / "first"
    assert main(["--model", str(models / "cap"), "--clip", str(models / "clip"), "--dataset", "tfds:coco_captions/test",
                 "--out", str(first), "--quiet"]) == 0
    lines = (first / "captions.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    rows[0]["caption"] = "a person riding a bicycle next to a dog"  # image 0 holds a person only
    (tmp_path / "edited.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "cmp"
    capsys.readouterr()
    embedded.clear()
    assert main(["--compare", str(models / "cap"), str(tmp_path / "edited.jsonl"), "--clip", str(models / "clip"),
                 "--dataset", "tfds:coco_captions/test", "--out", str(out), "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["rows"]) == ["REF", "cap", "edited"]
    assert metrics["images"] == 11 and metrics["skipped"] == {}
    assert "skipped 0 of 11 " in capsys.readouterr().out  # the images counted once, not once per model
    cap, edited = metrics["rows"]["cap"], metrics["rows"]["edited"]
    base = json.loads((first / "metrics.json").read_text())["rows"]["model"]
    assert cap == base  # the same model scored alone or beside others
    assert "at_length_limit" not in edited  # unknown for a captions file, and said so
    assert any("at_length_limit" in note for note in metrics["notes"])
    # the tiny model's words ("w12 w40 ...") name no COCO object: CHAIR-i is undefined, not 0
    assert cap["chair_s"] == 0.0 and cap["chair_i"] is None and cap["coverage"] == 0.0
    # the edited caption names a person (there) and a bicycle and a dog (not there)
    assert edited["chair_s"] == 1 / 11 and edited["chair_i"] == 2 / 3
    assert edited["coverage"] == 1 / 16  # 1 of the 16 annotated objects (11 images, 5 with two)
    assert (out / "compare.png").stat().st_size > 0 and (out / "captions" / "edited.jsonl").exists()
    # each text list embedded once: the references for REF's recall and, prefixed, for CLIPScore
    # (shared by the models), each model's captions for both
    assert len(embedded) == 6 and len(set(embedded)) == 6


def test_a_folder_without_annotations_says_what_it_cannot_score(models, tmp_path):
    from vlrm_jax.world.shapes import generate_world, write_world

    write_world(generate_world(seed=0, n_train=1, n_test=6, image_size=32), tmp_path / "world")
    proc = run_module("vlrm_jax.evaluate", "--model", str(models / "cap"), "--clip", str(models / "clip"),
                      "--dataset", str(tmp_path / "world" / "test"), "--out", str(tmp_path / "out"), "--quiet")
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert "cider" in metrics["rows"]["model"] and "chair_i" not in metrics["rows"]["model"]
    assert "no object annotations: CHAIR not computed" in proc.stdout
    assert "cider" in proc.stdout and "chair_i" not in proc.stdout
