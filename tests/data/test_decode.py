"""decode_image on a corpus of bad and odd files, and SkipCounter's log."""
import io
import logging

import numpy as np
import pytest
from PIL import Image

from tests.data.images import bad_and_odd_files, encode, pattern
from vlrm_jax.data import DecodeOptions, SkipCounter, decode_image, to_rgb

# A low pixel limit keeps the "too large" case cheap (a 300x300 file).
OPTS = DecodeOptions(max_pixels=50_000)
FILES = bad_and_odd_files()

REJECTED = {
    "empty.jpg": "empty",
    "truncated.jpg": "truncated",
    "truncated.png": "truncated",
    "text.jpg": "not_image",
    "tiny_1x1.png": "too_small",
    "thin_400x8.png": "too_small",
    "large_300x300.png": "too_large",
}
CONVERTED = sorted(set(FILES) - set(REJECTED))


@pytest.mark.parametrize("name", sorted(REJECTED))
def test_bad_files_are_rejected_with_their_reason(name):
    got = decode_image(FILES[name], OPTS)
    assert not got.ok and got.image is None
    assert got.reason == REJECTED[name], got.detail
    assert got.detail


@pytest.mark.parametrize("name", CONVERTED)
def test_odd_files_become_rgb_uint8(name):
    got = decode_image(FILES[name], OPTS)
    assert got.ok, (got.reason, got.detail)
    assert got.image.dtype == np.uint8 and got.image.ndim == 3 and got.image.shape[2] == 3


def test_paths_and_unreadable_paths(tmp_path):
    (tmp_path / "a.png").write_bytes(encode(pattern(40, 40), "PNG"))
    assert decode_image(str(tmp_path / "a.png")).image.shape == (40, 40, 3)
    missing = decode_image(tmp_path / "missing.jpg")
    assert missing.reason == "unreadable" and "missing.jpg" in missing.detail


def test_limits_are_configurable():
    assert decode_image(FILES["tiny_1x1.png"], DecodeOptions(min_side=1)).ok
    assert decode_image(FILES["large_300x300.png"]).ok  # default limit is far above 90000


def test_grey_16bit_is_scaled_not_clipped():
    img = decode_image(FILES["gray16.png"]).image
    assert img[0, 0].tolist() == [0, 0, 0] and img[-1, -1].tolist() == [255, 255, 255]
    mid = img.reshape(-1, 3)[img.shape[0] * img.shape[1] // 2, 0]
    assert 120 <= mid <= 136  # PIL's convert would have made everything above 255 white


def test_grey_and_bilevel_replicate_channels():
    for name in ("gray.png", "bilevel.png"):
        img = decode_image(FILES[name]).image
        assert (img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all()


def test_alpha_is_composited_on_white():
    img = decode_image(FILES["rgba.png"]).image
    # columns alternate alpha 0 / 255 (see images.py): transparent -> white, opaque -> colour
    assert (img[:, 0::2] == 255).all()
    np.testing.assert_array_equal(img[:, 1::2], pattern(64, 48, seed=1)[:, 1::2])
    pal = decode_image(FILES["palette_transparent.png"]).image
    assert (pal == 255).all(axis=-1).any()  # palette entry 0 became white


@pytest.mark.parametrize("name", ["rgba.png", "la.png", "palette_transparent.png", "cmyk.jpg",
                                  "gray.png"])
def test_rgb_conversion_equals_transformers(name):
    from transformers.image_transforms import convert_to_rgb
    im = Image.open(io.BytesIO(FILES[name]))
    want = convert_to_rgb(im, return_numpy=True)
    np.testing.assert_array_equal(np.asarray(to_rgb(im)), want)


def test_cmyk_keeps_colours():
    rgb = pattern(64, 48, seed=1).astype(int)
    got = decode_image(FILES["cmyk.jpg"]).image.astype(int)
    assert np.abs(got - rgb).mean() < 12  # JPEG loss only; a CMYK mix-up would be far off


def test_exif_orientation_is_applied():
    img = decode_image(FILES["exif_rotated.jpg"]).image
    assert img.shape == (64, 48, 3)  # stored 64 wide, 48 high; tag 6 turns it upright
    stored = decode_image(FILES["exif_rotated.jpg"], DecodeOptions(exif_transpose=False)).image
    assert stored.shape == (48, 64, 3)
    np.testing.assert_array_equal(img, np.rot90(stored, k=-1))  # clockwise


def test_jpeg_draft_decodes_smaller():
    data = encode(pattern(800, 600), quality=90)
    img = decode_image(data, DecodeOptions(draft=224)).image
    assert img.shape == (300, 400, 3)  # 1/2 scale keeps both sides >= 224


def test_skip_counter_counts_and_logs(caplog):
    counter = SkipCounter("corpus", examples_per_reason=1)
    with caplog.at_level(logging.DEBUG, logger="vlrm_jax.data.decode"):
        for name, data in sorted(FILES.items()):
            got = decode_image(data, OPTS)
            counter.skip(got.reason, name, got.detail) if not got.ok else counter.ok()
        summary = counter.log_summary()
    assert counter.counts == {"empty": 1, "not_image": 1, "too_large": 1, "too_small": 2,
                              "truncated": 2}
    assert counter.total == 7 and counter.seen == len(FILES)
    assert summary == ("corpus: skipped 7 of 16 (empty=1, not_image=1, too_large=1, "
                       "too_small=2, truncated=2)")
    assert summary in caplog.text
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    # the first skip of each reason is a WARNING naming the file; repeats go to DEBUG
    assert len(warned) == 5
    assert "'truncated.jpg'" in caplog.text and "'thin_400x8.png'" in caplog.text
