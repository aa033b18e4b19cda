"""python -m vlrm_jax.data.shards: an image folder -> webdataset tar shards that TarSource reads."""
import json
import os
import subprocess
import sys
import tarfile

import pytest

from tests.data.images import bad_and_odd_files, encode, pattern, write_files
from vlrm_jax.data import DecodeOptions, TarSource
from vlrm_jax.data import shards as shards_cli

_BAD_FILES = bad_and_odd_files()
# relative path -> bytes: nested folders, dots in folder and file names, a percent sign, two files
# that differ only in extension, an upper-case extension, every format TarSource reads.
GOOD = {
    "a/b/deep.jpg": encode(pattern(40, 36, seed=1)),
    "a/cat.v2.jpg": encode(pattern(41, 36, seed=2)),
    "a/percent%20.png": encode(pattern(42, 36, seed=3), "PNG"),
    "a/w.webp": encode(pattern(43, 36, seed=4), "WEBP"),
    "a/x.jpg": encode(pattern(44, 36, seed=5)),
    "a/x.png": encode(pattern(45, 36, seed=6), "PNG"),
    "c.d/e.png": encode(pattern(46, 36, seed=7), "PNG"),
    "top.jpeg": encode(pattern(47, 36, seed=8)),
    "z/UPPER.JPG": encode(pattern(48, 36, seed=9)),
}
KEYS = ["a/b/deep", "a/cat%2Ev2", "a/percent%2520", "a/w", "a/x", "a/x%2Epng", "c.d/e", "top", "z/UPPER"]
MEMBERS = ["a/b/deep.jpg", "a/cat%2Ev2.jpg", "a/percent%2520.png", "a/w.webp", "a/x.jpg",
           "a/x%2Epng.png", "c.d/e.png", "top.jpeg", "z/UPPER.jpg"]
BAD = {
    "bad/empty.jpg": _BAD_FILES["empty.jpg"],
    "bad/broken.jpg": _BAD_FILES["truncated.jpg"],
    "bad/tiny.png": _BAD_FILES["tiny_1x1.png"],
    "bad/text.jpg": _BAD_FILES["text.jpg"],
    "bad/old.bmp": encode(pattern(40, 40), "BMP"),  # a good image, but not a format TarSource reads
}
SKIPS = {"empty": 1, "not_image": 1, "too_small": 1, "truncated": 1, "unsupported_extension": 1}
SUMMARY = ("images: skipped 5 of 14 (empty=1, not_image=1, too_small=1, truncated=1, "
           "unsupported_extension=1)")


@pytest.fixture
def images(tmp_path):
    root = tmp_path / "images"
    write_files(str(root), {**GOOD, **BAD, "a/notes.txt": b"not an image extension: not listed"})
    return str(root)


def pack(images, out, *args):
    return shards_cli.main(["--images", images, "--out", str(out), "--quiet", *args])


def read_back(out):
    src = TarSource(os.path.join(str(out), "*.tar"), shuffle=False, process_index=0, process_count=1,
                    workers=0, decode=DecodeOptions(min_side=32))
    return src, [src.key(i) for i in range(len(src))], [src.read(i) for i in range(len(src))]


def shard_files(out):
    return sorted(os.listdir(out))


def test_shards_hold_every_good_image_unchanged_in_sorted_order(images, tmp_path, capsys):
    out = tmp_path / "shards"
    assert pack(images, out) == 0
    assert shard_files(out) == ["shard-00000.tar"]
    src, keys, data = read_back(out)
    assert sorted(GOOD) == list(GOOD)
    assert keys == KEYS
    assert data == [GOOD[name] for name in sorted(GOOD)]  # the original bytes, never re-encoded
    assert [r.key for r in src.records()] == KEYS and src.skips.counts == {}
    printed = capsys.readouterr().out.splitlines()
    assert printed == [
        f"wrote 9 of 14 images in 1 shards -> {out}; {SUMMARY}; minimum size 32 px (--min-size)",
        f"train on them with: --config.data.source='{out}/*.tar'",
    ]


def test_members_have_fixed_metadata(images, tmp_path):
    out = tmp_path / "shards"
    assert pack(images, out) == 0
    with tarfile.open(out / "shard-00000.tar") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == MEMBERS
    for m in members:
        assert m.isfile() and (m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) == (0, 0, 0, "", "", 0o644)


def test_skips_are_counted_by_reason(images, tmp_path):
    root, found = shards_cli.find_images(images)
    assert root == images and [f.relative for f in found] == sorted([*GOOD, *BAD])
    os.makedirs(tmp_path / "out")
    written = shards_cli.write_shards(found, str(tmp_path / "out"), per_shard=4,
                                      options=DecodeOptions(min_side=32), workers=2, progress=False)
    assert written.shards == [str(tmp_path / "out" / f"shard-0000{k}.tar") for k in range(3)]
    assert written.skips.counts == SKIPS and written.skips.seen == 14 and written.captioned == 0
    assert written.skips.summary() == SUMMARY


def test_same_input_gives_identical_bytes(images, tmp_path):
    assert pack(images, tmp_path / "one", "--per-shard", "4") == 0
    for k, name in enumerate(sorted(GOOD)):  # new file times must not change the shards
        os.utime(os.path.join(images, name), (1_000_000 + k, 2_000_000 + k))
    assert pack(images, tmp_path / "two", "--per-shard", "4", "--workers", "1") == 0
    names = shard_files(tmp_path / "one")
    assert names == shard_files(tmp_path / "two") == ["shard-00000.tar", "shard-00001.tar", "shard-00002.tar"]
    for name in names:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_per_shard_splits_in_order(images, tmp_path):
    out = tmp_path / "shards"
    assert pack(images, out, "--per-shard", "4") == 0
    assert shard_files(out) == ["shard-00000.tar", "shard-00001.tar", "shard-00002.tar"]
    per_shard = []
    for name in shard_files(out):
        with tarfile.open(out / name) as tar:
            per_shard.append([m.name for m in tar.getmembers()])
    assert per_shard == [MEMBERS[0:4], MEMBERS[4:8], MEMBERS[8:]]
    _, keys, data = read_back(out)
    assert keys == KEYS and data == [GOOD[name] for name in sorted(GOOD)]


def test_glob_input_keys_are_relative_to_its_fixed_folders(images, tmp_path, capsys):
    out = tmp_path / "shards"
    assert pack(os.path.join(images, "a", "**", "*.jpg"), out) == 0
    _, keys, data = read_back(out)
    assert keys == ["b/deep", "cat%2Ev2", "x"]
    assert data == [GOOD["a/b/deep.jpg"], GOOD["a/cat.v2.jpg"], GOOD["a/x.jpg"]]
    assert "wrote 3 of 3 images in 1 shards" in capsys.readouterr().out
    # A glob takes every file it matches: the text file is counted, not silently left out.
    assert pack(os.path.join(images, "a", "*"), tmp_path / "all_of_a") == 0
    _, keys, _ = read_back(tmp_path / "all_of_a")
    assert keys == ["cat%2Ev2", "percent%2520", "w", "x", "x%2Epng"]
    assert ("wrote 5 of 6 images in 1 shards -> " f"{tmp_path / 'all_of_a'}; images: skipped 1 of 6 "
            "(unsupported_extension=1)") in capsys.readouterr().out


def test_captions_become_txt_members(images, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    captions = tmp_path / "captions.jsonl"
    rows = [
        {"file": "a/x.png", "caption": "a picture, relative to the images"},
        {"file": "images/top.jpeg", "caption": "a picture, from the working directory"},
        {"file": "a/x.png", "caption": "a second caption: the first row wins"},
        {"file": "bad/broken.jpg", "caption": "skipped with its image"},
        {"file": "nowhere.jpg", "caption": "no such image"},
    ]
    captions.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    out = tmp_path / "shards"
    assert pack(images, out, "--captions", str(captions)) == 0
    with tarfile.open(out / "shard-00000.tar") as tar:
        texts = {m.name: tar.extractfile(m).read().decode() for m in tar if m.name.endswith(".txt")}
        names = tar.getnames()
    assert texts == {"a/x%2Epng.txt": "a picture, relative to the images",
                     "top.txt": "a picture, from the working directory"}
    assert names.index("a/x%2Epng.txt") == names.index("a/x%2Epng.png") + 1
    src, keys, data = read_back(out)
    assert keys == KEYS and data == [GOOD[name] for name in sorted(GOOD)] and src.skips.counts == {}
    assert "captions: 2 of the 9 images have one" in capsys.readouterr().out.splitlines()


def test_non_empty_out_needs_overwrite_which_removes_older_shards(images, tmp_path, capsys):
    out = tmp_path / "shards"
    assert pack(images, out, "--per-shard", "2") == 0
    assert len(shard_files(out)) == 5
    (out / "keep.me").write_bytes(b"not a shard")
    before = {name: (out / name).read_bytes() for name in shard_files(out)}
    capsys.readouterr()
    assert pack(images, out) == 2
    assert capsys.readouterr().err == f"error: --out {out} is not empty (pass --overwrite to replace its shards)\n"
    assert {name: (out / name).read_bytes() for name in shard_files(out)} == before
    (out / ".shard-00009.tar.partial").write_bytes(b"left by a killed run")
    assert pack(images, out, "--overwrite") == 0
    assert shard_files(out) == ["keep.me", "shard-00000.tar"]
    assert "removed 5 older shard files" in capsys.readouterr().out.splitlines()
    _, keys, _ = read_back(out)
    assert keys == KEYS


def test_a_failure_leaves_only_complete_shards(images, tmp_path, monkeypatch):
    check = shards_cli.check_image

    def failing(image, options):
        if image.relative == "c.d/e.png":
            raise RuntimeError("disk gone")
        return check(image, options)

    monkeypatch.setattr(shards_cli, "check_image", failing)
    out = tmp_path / "shards"
    with pytest.raises(RuntimeError, match="disk gone"):
        pack(images, out, "--per-shard", "4")
    assert shard_files(out) == ["shard-00000.tar"]  # the second shard was never finished
    _, keys, _ = read_back(out)
    assert keys == KEYS[:4]


def _write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return path


@pytest.mark.parametrize("case", ["empty_folder", "no_match", "out_under_a_file", "out_is_a_file",
                                  "captions_missing", "captions_not_json", "captions_no_caption",
                                  "captions_name_no_image", "only_bad_images"])
def test_bad_input_exits_2_with_an_error_line(case, images, tmp_path, capsys):
    out, args = tmp_path / "shards", []
    if case == "empty_folder":
        os.makedirs(tmp_path / "empty")
        images = str(tmp_path / "empty")
    elif case == "no_match":
        images = os.path.join(images, "*.gif")
    elif case == "out_under_a_file":
        out = tmp_path / "plain_file" / "shards"
        _write(str(tmp_path / "plain_file"), b"x")
    elif case == "out_is_a_file":
        out = tmp_path / "plain_file"
        _write(str(out), b"x")
    elif case == "captions_missing":
        args = ["--captions", str(tmp_path / "missing.jsonl")]
    elif case == "captions_not_json":
        args = ["--captions", _write(str(tmp_path / "c.jsonl"), b'{"file": "top.jpeg", "caption": "ok"}\n{oops\n')]
    elif case == "captions_no_caption":
        args = ["--captions", _write(str(tmp_path / "c.jsonl"), b'{"file": "top.jpeg"}\n')]
    elif case == "captions_name_no_image":
        args = ["--captions", _write(str(tmp_path / "c.jsonl"), b'{"file": "elsewhere/top.jpeg", "caption": "?"}\n')]
    elif case == "only_bad_images":
        images = os.path.join(images, "bad", "*")
    assert pack(images, out, *args) == 2
    captured = capsys.readouterr()
    error = captured.err.splitlines()[-1]  # after the decoder's warnings, if any
    assert error.startswith("error: ") and captured.err.count("error: ") == 1
    assert "Traceback" not in captured.err and "train on them" not in captured.out
    assert not os.path.isdir(out) or not any(n.endswith(".tar") for n in os.listdir(out))
    if case == "captions_not_json":
        assert error.startswith(f"error: --captions {tmp_path / 'c.jsonl'}, line 2: not a caption row")
    if case == "only_bad_images":
        assert error == ("error: no usable image among 5 files: images: skipped 5 of 5 (empty=1, "
                         "not_image=1, too_small=1, truncated=1, unsupported_extension=1)")
    else:
        assert captured.err.count("\n") == 1


@pytest.mark.parametrize("flag", ["--per-shard", "--min-size"])
def test_non_positive_numbers_are_usage_errors(flag, images, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        pack(images, tmp_path / "shards", flag, "0")
    assert e.value.code == 2 and f"{flag} must be >= 1" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "shards")


def test_min_size_is_the_decoders_rule_and_named_in_the_flags(images, tmp_path, capsys):
    out = tmp_path / "shards"
    assert pack(images, out, "--min-size", "1") == 0  # now the 1x1 image is kept
    _, keys, data = read_back(out)
    assert keys == KEYS[:6] + ["bad/tiny"] + KEYS[6:]
    assert data[6] == BAD["bad/tiny.png"]
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("wrote 10 of 14 images in 1 shards")
    assert printed[0].endswith("(empty=1, not_image=1, truncated=1, unsupported_extension=1); "
                               "minimum size 1 px (--min-size)")
    assert printed[-1] == f"train on them with: --config.data.source='{out}/*.tar' --config.data.min_side=1"


def test_sample_keys_are_unique_and_dot_free():
    relatives = ["a/x.jpg", "a/x.png", "a/x.png.jpg", "b.c/d.e.jpg", "p%2E.jpg", "p..jpg", "q.JPG", "q.jpg"]
    keys = shards_cli.sample_keys(relatives)
    assert keys == ["a/x", "a/x%2Epng", "a/x%2Epng%2Ejpg", "b.c/d%2Ee", "p%252E", "p%2E", "q", "q%2Ejpg"]
    assert all("." not in k.rpartition("/")[2] for k in keys)


def test_runs_as_a_module(images, tmp_path):
    command = [sys.executable, "-m", "vlrm_jax.data.shards", "--quiet", "--out", "shards"]
    ok = subprocess.run([*command, "--images", images], cwd=tmp_path, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines()[-1] == "train on them with: --config.data.source='shards/*.tar'"
    bad = subprocess.run([*command, "--images", str(tmp_path / "nothing_here")], cwd=tmp_path,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith("error: --images ") and "Traceback" not in bad.stderr


def test_training_reads_the_output_folder_as_shards(images, tmp_path):
    """`--config.data.source=shards/` (the folder itself) trains on the shards, in the same order
    as the glob; a folder of images stays an image folder."""
    from vlrm_jax.data import FolderSource
    from vlrm_jax.rl.data import open_training_source

    out = tmp_path / "shards"
    assert pack(images, out, "--per-shard", "4") == 0
    by_folder, by_glob = open_training_source(str(out), seed=0), open_training_source(f"{out}/*.tar", seed=0)
    assert isinstance(by_folder, TarSource)
    assert [by_folder.key(i) for i in range(len(by_folder))] == [by_glob.key(i) for i in range(len(by_glob))] == KEYS
    assert isinstance(open_training_source(images, seed=0), FolderSource)
