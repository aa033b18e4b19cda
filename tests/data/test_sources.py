"""Folder and tar sources: host split, seeded order, resume, batching, bad files."""
import io
import logging
import os
import tarfile

import numpy as np
import pytest

from tests.data.images import bad_and_odd_files, encode, pattern, write_files
from vlrm_jax.data import FolderSource, OpenClipPreprocessor, TarSource

N_GOOD = 23
BAD = ["empty.jpg", "truncated.jpg", "text.jpg", "tiny_1x1.png"]
TRANSFORM = OpenClipPreprocessor(16)  # small output: fast, fixed shape


def _corpus():
    """name -> bytes: 23 good images in two folders, and 4 bad ones among them."""
    files = {f"{'a' if k % 2 else 'b/c'}/{k:03d}.png": encode(pattern(40 + k, 36, seed=k), "PNG")
             for k in range(N_GOOD)}
    bad = bad_and_odd_files()
    files.update({f"b/bad_{name}": bad[name] for name in BAD})
    files["a/notes.txt"] = b"not listed: wrong extension"
    return files


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    write_files(str(root), _corpus())
    return str(root)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """The same images as webdataset tar shards (3), with caption and metadata-only samples."""
    root = tmp_path_factory.mktemp("tar")
    items = sorted(_corpus().items())
    paths = []
    for s in range(3):
        path = root / f"shard-{s:04d}.tar"
        with tarfile.open(path, "w") as tar:
            for name, data in items[s::3]:
                if name.endswith(".txt"):
                    continue
                stem, ext = name.rsplit(".", 1)
                for member, payload in [(f"{stem.replace('.', '_')}.{ext}", data),
                                        (f"{stem.replace('.', '_')}.txt", b"a caption")]:
                    info = tarfile.TarInfo(member)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
            info = tarfile.TarInfo(f"meta_only_{s}.json")
            info.size = 2
            tar.addfile(info, io.BytesIO(b"{}"))
        paths.append(str(path))
    return paths


def make(kind, folder, shards, **kwargs):
    kwargs.setdefault("process_index", 0)
    kwargs.setdefault("process_count", 1)
    kwargs.setdefault("workers", 3)
    if kind == "folder":
        return FolderSource(folder, **kwargs)
    return TarSource(shards, **kwargs)


KINDS = ["folder", "tar"]


@pytest.mark.parametrize("kind", KINDS)
def test_lists_every_image_file_once(kind, folder, shards):
    src = make(kind, folder, shards, shuffle=False)
    assert len(src) == N_GOOD + len(BAD)
    keys = [src.key(i) for i in range(len(src))]
    assert keys == sorted(keys) if kind == "folder" else len(set(keys)) == len(keys)
    good = [r.key for r in src.records()]
    assert len(good) == N_GOOD
    want = {"empty": 1, "not_image": 1, "too_small": 1, "truncated": 1}
    if kind == "tar":
        want["no_image"] = 3  # the metadata-only samples, counted when the shards are indexed
    assert src.skips.counts == want


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("hosts", [2, 3])
def test_hosts_cover_everything_exactly_once(kind, hosts, folder, shards):
    seen = []
    for h in range(hosts):
        src = make(kind, folder, shards, seed=5, process_index=h, process_count=hosts)
        seen += [r.key for r in src.records()]
    everything = [r.key for r in make(kind, folder, shards).records()]
    assert sorted(seen) == sorted(everything) and len(set(seen)) == N_GOOD


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_order_new_epoch_new_order(kind, folder, shards):
    a = [r.key for r in make(kind, folder, shards, seed=1).records(num_epochs=2)]
    b = [r.key for r in make(kind, folder, shards, seed=1, workers=0).records(num_epochs=2)]
    c = [r.key for r in make(kind, folder, shards, seed=2).records(num_epochs=2)]
    assert a == b  # also: thread pool or not, the order is the same
    assert a != c
    assert a[:N_GOOD] != a[N_GOOD:] and sorted(a[:N_GOOD]) == sorted(a[N_GOOD:])


@pytest.mark.parametrize("kind", KINDS)
def test_records_resume_yields_the_remainder(kind, folder, shards):
    src = make(kind, folder, shards, seed=3, process_index=1, process_count=2)
    full = list(src.records(transform=TRANSFORM, num_epochs=2))
    for cut in [0, 4, len(full) // 2 - 1, len(full) // 2, len(full) - 2]:
        rest = list(make(kind, folder, shards, seed=3, process_index=1, process_count=2)
                    .records(transform=TRANSFORM, num_epochs=2, state=full[cut].state))
        assert [r.key for r in rest] == [r.key for r in full[cut + 1:]]
        for r, f in zip(rest, full[cut + 1:]):
            np.testing.assert_array_equal(r.image, f.image)
    assert full[-1].state == {"epoch": 2, "index": 0}


@pytest.mark.parametrize("kind", KINDS)
def test_fill_batches_resume_and_drop_the_tail(kind, folder, shards):
    src = make(kind, folder, shards, seed=4)
    full = list(src.batches(5, transform=TRANSFORM, num_epochs=2))
    assert len(full) == 2 * (N_GOOD // 5)
    for b in full:
        assert b.images.shape == (5, 16, 16, 3) and b.images.dtype == np.float32
        assert b.valid.all() and all(b.keys)
    keys_epoch0 = sum((b.keys for b in full[: N_GOOD // 5]), [])
    assert len(set(keys_epoch0)) == 20  # 3 dropped at the end of the epoch
    for cut in [0, 3, 4, 6]:
        rest = list(make(kind, folder, shards, seed=4).batches(
            5, transform=TRANSFORM, num_epochs=2, state=full[cut].state))
        assert [b.keys for b in rest] == [b.keys for b in full[cut + 1:]]
        np.testing.assert_array_equal(rest[0].images, full[cut + 1].images)


@pytest.mark.parametrize("kind", KINDS)
def test_padded_batches_lockstep_across_hosts(kind, folder, shards):
    hosts, bs = 3, 4
    n = N_GOOD + len(BAD)  # 27 items: 9 per host, bad ones become padding
    per_host = []
    for h in range(hosts):
        src = make(kind, folder, shards, process_index=h, process_count=hosts)
        batches = list(src.batches(bs, transform=TRANSFORM, drop_remainder=False))
        per_host.append(batches)
        assert len(batches) == -(-(-(-n // hosts)) // bs)
        for b in batches:
            assert b.images.shape == (bs, 16, 16, 3)
            assert (b.images[~b.valid] == 0).all() and all(k == "" for k, v in zip(b.keys, b.valid) if not v)
        # resume from every batch gives the rest, padding included
        for cut in range(len(batches)):
            rest = list(make(kind, folder, shards, process_index=h, process_count=hosts).batches(
                bs, transform=TRANSFORM, drop_remainder=False, state=batches[cut].state))
            assert [(b.keys, b.valid.tolist()) for b in rest] == \
                   [(b.keys, b.valid.tolist()) for b in batches[cut + 1:]]
    valid_keys = [k for bs_ in per_host for b in bs_ for k, v in zip(b.keys, b.valid) if v]
    assert len(valid_keys) == N_GOOD == len(set(valid_keys))


def test_padded_batches_when_hosts_hold_unequal_counts(folder, shards):
    # 27 items over 4 hosts: 7, 7, 7, 6; every host must make ceil(7 / 3) = 3 batches an epoch.
    counts = []
    for h in range(4):
        src = make("folder", folder, shards, process_index=h, process_count=4, shuffle=False)
        batches = list(src.batches(3, transform=TRANSFORM, drop_remainder=False, num_epochs=2))
        counts.append(len(batches))
        assert [b.state for b in batches[:3]] == [{"epoch": 0, "index": 3}, {"epoch": 0, "index": 6},
                                                  {"epoch": 1, "index": 0}]
        assert batches[2].valid.sum() == (0 if h == 3 else 1)  # host 3 owes a padding batch
    assert counts == [6, 6, 6, 6]


def test_skips_are_counted_and_logged(folder, shards, caplog):
    src = make("folder", folder, shards)
    with caplog.at_level(logging.INFO):
        list(src.records())
    assert "FolderSource: skipped 4 of 27 (empty=1, not_image=1, too_small=1, truncated=1)" in caplog.text
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("'b/bad_truncated.jpg'" in w and "truncated" in w for w in warnings)


def test_tar_groups_by_key_and_counts_samples_without_image(shards):
    src = TarSource(shards, process_index=0, process_count=1, shuffle=False)
    assert src.skips.counts == {"no_image": 3}  # the three meta_only_*.json samples
    r = next(src.records())
    assert r.key == "a/001" and r.extras == {"shard": shards[0]}


def test_damaged_tar_keeps_what_it_can(tmp_path):
    whole = tmp_path / "whole.tar"
    with tarfile.open(whole, "w") as tar:
        for k in range(6):
            data = encode(pattern(50, 50, seed=k), "PNG")  # 5-7 KB each
            info = tarfile.TarInfo(f"{k:03d}.png")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    data = whole.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: len(data) // 2])  # ends inside the data of member 003
    src = TarSource([str(cut)], process_index=0, process_count=1, shuffle=False)
    assert [r.key for r in src.records()] == ["000", "001", "002"]
    assert src.skips.counts == {"bad_shard": 1, "unreadable": 1}


def test_clear_errors_for_bad_arguments(tmp_path, folder):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        FolderSource(tmp_path / "nowhere", process_index=0, process_count=1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no files"):
        FolderSource(tmp_path / "empty", process_index=0, process_count=1)
    with pytest.raises(FileNotFoundError, match="no tar shards"):
        TarSource(str(tmp_path / "*.tar"), process_index=0, process_count=1)
    gz = tmp_path / "x.tar.gz"
    with tarfile.open(gz, "w:gz") as tar:
        tar.add(os.path.join(folder, "a", "001.png"), "001.png")
    with pytest.raises(ValueError, match="plain"):
        TarSource([str(gz)], process_index=0, process_count=1)
    with pytest.raises(ValueError, match="process_index"):
        FolderSource(folder, process_index=2, process_count=2)
    with pytest.raises(ValueError, match="state"):
        next(FolderSource(folder, process_index=0, process_count=1).records(state={"epoch": 0}))


def test_default_host_is_jax_process(folder):
    src = FolderSource(folder)
    assert (src.process_index, src.process_count) == (0, 1)
