"""Preprocessing against the real processors on real JPEG / PNG files.

Tolerances (float32, after normalisation):
- transformers' PIL processor (BlipImageProcessorPil), which we match: 1e-6 (we measure 0).
- transformers' torchvision processor (BlipImageProcessor, the default): it rounds the resize
  differently by up to 2 uint8 levels; 2 levels are 2 / (255 * 0.2613) = 0.030, so max 0.031 and
  mean 2e-4.
- open_clip.image_transform: 1e-6 (we measure 0).
"""
import io

import numpy as np
import pytest
from PIL import Image

from tests.data.images import SIZES, encode, pattern
from vlrm_jax.data import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    Blip2Preprocessor,
    OpenClipPreprocessor,
    blip2_pixel_values,
    decode_image,
    open_clip_pixel_values,
)
from vlrm_jax.data.decode import DecodeOptions

# blip2-opt-2.7b's preprocessor_config.json, as constructor arguments (no hub).
BLIP2_OPT_27B = dict(
    do_resize=True, size={"height": 224, "width": 224}, resample=3, do_rescale=True,
    rescale_factor=1 / 255, do_normalize=True, image_mean=list(OPENAI_CLIP_MEAN),
    image_std=list(OPENAI_CLIP_STD), do_convert_rgb=True,
)


def _files():
    """(name, encoded bytes) for each size, as JPEG and as PNG."""
    out = []
    for k, (w, h) in enumerate(SIZES):
        out.append((f"{w}x{h}.jpg", encode(pattern(w, h, seed=k), quality=90)))
        out.append((f"{w}x{h}.png", encode(pattern(w, h, seed=k), "PNG")))
    return out


FILES = _files()
IDS = [name for name, _ in FILES]


def _pil(data):
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def _ours(data):
    return decode_image(data, DecodeOptions(min_side=1)).image


@pytest.fixture(scope="module")
def blip_processors():
    from transformers.models.blip.image_processing_blip import BlipImageProcessor
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil
    return BlipImageProcessorPil(**BLIP2_OPT_27B), BlipImageProcessor(**BLIP2_OPT_27B)


def _hf(processor, im):
    return processor(im, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)


@pytest.mark.parametrize("name,data", FILES, ids=IDS)
def test_blip2_matches_transformers(name, data, blip_processors):
    slow, fast = blip_processors
    im = _pil(data)
    got = Blip2Preprocessor()(_ours(data))
    assert got.shape == (224, 224, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, _hf(slow, im), rtol=0, atol=1e-6)
    diff = np.abs(got - _hf(fast, im))
    assert diff.max() <= 0.031 and diff.mean() < 2e-4, (diff.max(), diff.mean())


def test_blip2_batch_and_pil_input(blip_processors):
    slow, _ = blip_processors
    ims = [_pil(d) for _, d in FILES[:3]]
    got = blip2_pixel_values(ims)  # PIL images go in as they are
    want = slow(ims, return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)
    assert got.shape == (3, 224, 224, 3)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_blip2_center_crop_equals_open_clip_geometry():
    img = _ours(FILES[6][1])  # 1000x200
    cropped = Blip2Preprocessor(center_crop=True)(img)
    clip = OpenClipPreprocessor(224)(img)  # same geometry and mean/std, rescale rounding aside
    np.testing.assert_allclose(cropped, clip, rtol=0, atol=1e-6)
    assert np.abs(cropped - Blip2Preprocessor()(img)).max() > 0.5  # squash differs a lot


OPEN_CLIP_CONFIGS = {
    "vit-g-14-default": dict(image_size=224),
    "squash": dict(image_size=224, resize_mode="squash"),
    "longest-pad": dict(image_size=224, resize_mode="longest", fill_color=0),
    "custom-mean-bilinear": dict(image_size=196, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                                 interpolation="bilinear"),
    "non-square": dict(image_size=(160, 200)),
}


@pytest.mark.parametrize("config", sorted(OPEN_CLIP_CONFIGS))
@pytest.mark.parametrize("name,data", FILES[::2], ids=IDS[::2])
def test_open_clip_matches_its_transform(config, name, data):
    import open_clip
    c = OPEN_CLIP_CONFIGS[config]
    ref = open_clip.image_transform(
        c["image_size"], is_train=False, mean=c.get("mean"), std=c.get("std"),
        resize_mode=c.get("resize_mode"), interpolation=c.get("interpolation"),
        fill_color=c.get("fill_color", 0))
    want = ref(_pil(data)).numpy().transpose(1, 2, 0)
    got = OpenClipPreprocessor(**c)(_ours(data))
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_open_clip_model_transform_is_the_default():
    """create_model_and_transforms(...)[2] for ViT-g-14 is image_transform(224, shortest, OpenAI)."""
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2
    cfg = open_clip.get_model_config("ViT-g-14")
    pp = PreprocessCfg(size=cfg["vision_cfg"]["image_size"])
    assert pp.size == 224 and pp.resize_mode == "shortest" and pp.interpolation == "bicubic"
    data = FILES[0][1]
    want = image_transform_v2(pp, is_train=False)(_pil(data)).numpy().transpose(1, 2, 0)
    got = open_clip_pixel_values([_ours(data)])[0]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_rejects_non_rgb_arrays():
    with pytest.raises(ValueError, match="RGB uint8"):
        Blip2Preprocessor()(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="resize_mode"):
        OpenClipPreprocessor(resize_mode="fit")
