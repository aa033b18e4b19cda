"""TfdsSource on a mocked coco_captions (the `mock_coco` fixture of tests/data/coco_mock.py;
nothing is downloaded). tensorflow is imported inside the tests only (conftest has imported
torchvision first)."""
import numpy as np
import pytest

from tests.data.coco_mock import N
from tests.data.images import pattern
from vlrm_jax.data import DecodeOptions, OpenClipPreprocessor


def _source(**kwargs):
    from vlrm_jax.data.tfds_source import TfdsSource
    kwargs.setdefault("process_index", 0)
    kwargs.setdefault("process_count", 1)
    kwargs.setdefault("decode", DecodeOptions(min_side=8))
    return TfdsSource("coco_captions", "test", **kwargs)


def test_images_keys_and_captions(mock_coco):
    src = _source(shuffle=False)
    assert len(src) == N
    records = list(src.records())
    assert [r.key for r in records] == [str(1000 + k) for k in range(N)]
    for k, r in enumerate(records):
        # JPEG-encoded by TFDS (coco_captions' format), decoded by PIL: JPEG loss only
        want = pattern(40 + 3 * k, 48, seed=k, noise=0)
        assert r.image.shape == want.shape
        assert np.abs(r.image.astype(int) - want).mean() < 4
        assert r.extras["captions"] == [f"caption {j} of image {1000 + k}" for j in range(5)]
    # the annotated objects by class name (the mock, as coco_captions, declares 80 unnamed labels:
    # COCO's names in label order stand in, as a prepared copy stores them)
    assert records[0].extras["objects"] == ["person"]
    assert records[1].extras["objects"] == ["bicycle", "sheep"]  # labels 1 and 18
    assert records[10].extras["objects"] == ["fire hydrant"]
    without = _source(shuffle=False, object_field=None)
    assert "objects" not in next(iter(without.records())).extras


def test_hosts_resume_and_padded_batches(mock_coco):
    hosts = 3
    keys, batch_counts = [], []
    for h in range(hosts):
        src = _source(seed=7, process_index=h, process_count=hosts)
        full = list(src.records(num_epochs=2))
        keys += [r.key for r in full[: len(full) // 2]]
        rest = list(_source(seed=7, process_index=h, process_count=hosts)
                    .records(num_epochs=2, state=full[1].state))
        assert [r.key for r in rest] == [r.key for r in full[2:]]
        batches = list(src.batches(2, transform=OpenClipPreprocessor(24), drop_remainder=False))
        batch_counts.append(len(batches))
        assert all(b.images.shape == (2, 24, 24, 3) for b in batches)
        assert all(len(b.extras["captions"]) == 2 for b in batches)
    assert sorted(keys) == sorted(str(1000 + k) for k in range(N))
    assert batch_counts == [2, 2, 2]  # 11 over 3 hosts: 4, 4, 3 -> ceil(4 / 2) batches each


def test_unknown_image_feature_is_named(mock_coco):
    with pytest.raises(KeyError, match="picture"):
        _source(image_key="picture")


def test_an_unprepared_dataset_says_how_to_prepare_it(tmp_path):
    with pytest.raises(FileNotFoundError) as failed:
        _source(data_dir=str(tmp_path))
    message = str(failed.value)
    assert f"'coco_captions' is not prepared under data dir '{tmp_path}'" in message
    assert f"tfds.builder('coco_captions', data_dir='{tmp_path}').download_and_prepare()" in message
    assert f"tfds build coco_captions --data_dir {tmp_path}" in message


def test_an_unknown_dataset_is_named_briefly(tmp_path):
    from vlrm_jax.data.tfds_source import TfdsSource

    with pytest.raises(ValueError, match="no dataset 'coco_captionz'") as failed:
        TfdsSource("coco_captionz", data_dir=str(tmp_path), process_index=0, process_count=1)
    assert len(str(failed.value)) < 200  # not TFDS's list of every dataset
