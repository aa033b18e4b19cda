"""The caption and evaluate commands agree on a folder: the same images, the same keys, each
accepting the other's caption file; and both keep the terminal quiet."""
import contextlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import run_module

# `models` (tiny converted captioner and CLIP) comes from tests/eval/conftest.py.

# Library log lines: Python logging's "INFO name: ..." and absl C++'s "I0101 12:00:00.000 ...".
INFO_LINE = re.compile(r"^(INFO\b|I\d{4} )", re.MULTILINE)


def _save(path, width, height, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)


@pytest.fixture
def photos(tmp_path):
    """A user's folder: photos in several formats and a subfolder, a tiny icon, a broken file and a note."""
    root = tmp_path / "photos"
    (root / "trip").mkdir(parents=True)
    _save(root / "board_photo.jpg", 64, 48, seed=1)
    _save(root / "trip" / "beach.png", 40, 40, seed=2)
    _save(root / "anim.gif", 30, 50, seed=3)
    _save(root / "scan.TIF", 50, 30, seed=4)
    _save(root / "icon.png", 4, 4, seed=5)
    (root / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "notes.txt").write_text("not an image")
    return root


GOOD = ["anim.gif", "board_photo.jpg", "icon.png", "scan.TIF", "trip/beach.png"]


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _evaluate(models, photos, captions, out):
    """`python -m vlrm_jax.evaluate --dataset photos --captions captions`, in this process."""
    from vlrm_jax.evaluate import main

    with contextlib.redirect_stdout(None):
        assert main(["--clip", str(models / "clip"), "--dataset", str(photos), "--captions", str(captions),
                     "--out", str(out), "--batch-size", "4", "--quiet"]) == 0
    return json.loads((out / "metrics.json").read_text())


def test_caption_output_feeds_evaluate_and_back(models, photos, tmp_path):
    out = tmp_path / "out.jsonl"
    caption = run_module("vlrm_jax.caption", "--model", str(models / "cap"), "--images", str(photos), "--out", str(out),
                         "--batch-size", "4", "--max-new-tokens", "6", "--num-beams", "2")
    assert sorted(r["file"] for r in _rows(out)) == GOOD  # relative to --images, "/" separated
    assert "captioned 5 of 6 images" in caption.stdout and "not_image=1" in caption.stdout
    # quiet by default: the skip warning and the bar, no library INFO lines
    assert not INFO_LINE.search(caption.stderr), caption.stderr
    assert "skipped 'broken.jpg'" in caption.stderr

    metrics = _evaluate(models, photos, out, tmp_path / "E")
    assert metrics["images"] == 5 and metrics["skipped"] == {"not_image": 1}
    given = {r["file"]: r["caption"] for r in _rows(out)}
    assert {r["file"]: r["caption"] for r in _rows(tmp_path / "E" / "captions.jsonl")} == given

    # and back: evaluate's own captions file is a valid --captions file, with the same numbers
    assert _evaluate(models, photos, tmp_path / "E" / "captions.jsonl", tmp_path / "E2")["rows"] == metrics["rows"]


@pytest.mark.slow
def test_evaluate_command_is_quiet_unless_verbose(models, photos, tmp_path):
    out = tmp_path / "out.jsonl"
    run_module("vlrm_jax.caption", "--model", str(models / "cap"), "--images", str(photos), "--out", str(out),
               "--max-new-tokens", "4", "--num-beams", "1", "--quiet")
    args = ["--clip", str(models / "clip"), "--dataset", str(photos), "--captions", str(out), "--out", str(tmp_path / "E")]
    proc = run_module("vlrm_jax.evaluate", *args)
    assert "5 images" in proc.stdout and "skipped 'broken.jpg'" in proc.stderr
    assert not INFO_LINE.search(proc.stderr), proc.stderr
    verbose = run_module("vlrm_jax.evaluate", *args, "--verbose", "--quiet")
    assert "INFO absl" in verbose.stderr  # orbax reading the CLIP folder


def test_both_commands_list_and_read_the_same_images(photos):
    from vlrm_jax.caption import list_images, open_images
    from vlrm_jax.evaluate import open_source

    listed = sorted(Path(p).relative_to(photos).as_posix() for p in list_images(str(photos)))
    evaluated = open_source(str(photos))
    assert listed == [evaluated.key(i) for i in range(len(evaluated))] == sorted(GOOD + ["broken.jpg"])
    captioned = open_images(str(photos))
    assert [r.key for r in captioned.records()] == [r.key for r in evaluated.records()] == GOOD
    assert captioned.skips.counts == evaluated.skips.counts == {"not_image": 1}


def test_a_glob_is_keyed_from_its_fixed_folder(photos):
    from vlrm_jax.caption import open_images

    source = open_images(str(photos / "**" / "*.png"))
    assert [source.key(i) for i in range(len(source))] == ["icon.png", "trip/beach.png"]


def test_evaluate_names_both_sides_when_no_caption_matches(photos, tmp_path):
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text(json.dumps({"file": "elsewhere/board_photo.jpg", "caption": "a board"}) + "\n")
    proc = run_module("vlrm_jax.evaluate", "--clip", str(tmp_path / "no-clip-needed"), "--dataset", str(photos),
                      "--captions", str(wrong), "--out", str(tmp_path / "E"), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "'elsewhere/board_photo.jpg'" in proc.stderr and "'anim.gif'" in proc.stderr
    assert str(wrong) in proc.stderr

    # a file written with paths as given on the command line still names the folder's images
    old_style = tmp_path / "paths.jsonl"
    old_style.write_text("".join(json.dumps({"file": str(photos / key), "caption": key}) + "\n" for key in GOOD))
    from vlrm_jax.eval.caption_file import match_captions, read_captions

    assert match_captions(read_captions(str(old_style)), GOOD, folder=str(photos)) == {k: k for k in GOOD}


class _Recorder:
    """Stands in for the progress bar and the model: records the order of events."""

    def __init__(self, events):
        self.events, self.n = events, 0

    def update(self, k):
        self.n += k
        self.events.append(("bar", self.n))


def _fake_bar(events):
    @contextlib.contextmanager
    def progress_bar(total, desc, enabled=True):
        events.append(("total", total))
        yield _Recorder(events)
    return progress_bar


class _FakeCaptioner:
    class config:  # noqa: N801 - shaped like the real config
        class vision:  # noqa: N801
            image_size = 8

        class text:  # noqa: N801
            pad_token_id = 1

    def __init__(self, events):
        self.events = events

    def generate(self, pixels, **kwargs):
        self.events.append(("generate", len(pixels)))
        return np.full((len(pixels), 3), 5)

    def decode(self, ids):
        return ["a caption"] * len(ids)


def test_caption_bar_advances_when_a_batch_is_captioned(photos, tmp_path, monkeypatch):
    import vlrm_jax.caption as caption

    events = []
    monkeypatch.setattr(caption, "progress_bar", _fake_bar(events))
    source = caption.open_images(str(photos))
    caption.caption_files(_FakeCaptioner(events), source, str(tmp_path / "o.jsonl"), 4, {})
    # 6 files in two batches of 4 slots; the bar moves only after each batch's generate
    assert events == [("total", 6), ("generate", 4), ("bar", 4), ("generate", 4), ("bar", 6)]


def test_evaluate_bar_counts_every_file_after_its_batch(photos, monkeypatch):
    import vlrm_jax.eval.clip_eval as clip_eval
    from vlrm_jax.evaluate import open_source

    events = []

    class Clip:
        def pixel_values(self, images):
            return images

        def encode_image(self, images):
            events.append(("embed", len(images)))
            return np.ones((len(images), 2))

    monkeypatch.setattr(clip_eval, "progress_bar", _fake_bar(events))
    data = clip_eval.collect(open_source(str(photos)), Clip(), captions={k: k for k in GOOD}, batch_size=4)
    assert data.keys == GOOD
    # the broken file (position 2) counts with the first batch, which ends at position 5
    assert events == [("total", 6), ("embed", 4), ("bar", 5), ("embed", 1), ("bar", 6)]


def test_an_unprepared_tfds_dataset_is_a_clear_error(tmp_path):
    args = ["--clip", str(tmp_path / "clip"), "--captions", str(tmp_path / "c.jsonl"), "--out", str(tmp_path / "E"),
            "--dataset", "tfds:coco_captions/test", "--data-dir", str(tmp_path / "empty")]
    (tmp_path / "empty").mkdir()
    proc = run_module("vlrm_jax.evaluate", *args, check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ")
    assert "Traceback" not in proc.stderr and not INFO_LINE.search(proc.stderr), proc.stderr
    assert "not prepared under data dir" in proc.stderr and "download_and_prepare()" in proc.stderr
    assert f"tfds build coco_captions --data_dir {tmp_path / 'empty'}" in proc.stderr
