"""Image preprocessing in NumPy/PIL, equal to the processors the models were trained with.

Output: float32, channels last, (H, W, 3) per image or (B, H, W, 3) per batch. Inputs are RGB
uint8 arrays (H, W, 3) as `decode.decode_image` returns them, or PIL images (converted to RGB
first with `decode.to_rgb`, i.e. transparency composited on white as transformers does).

BLIP2 (`Blip2Preprocessor`): transformers' `BlipImageProcessor` configured as
Salesforce/blip2-opt-2.7b configures it: resize to 224x224 ignoring aspect, bicubic, rescale
1/255, normalise with OPENAI_CLIP_MEAN / OPENAI_CLIP_STD. transformers 5 ships two backends:
`BlipImageProcessor` (torchvision tensors, the default "fast" one) and `BlipImageProcessorPil`
(PIL, the "slow" one). We match the PIL one, because
- it is reproducible exactly with PIL alone (same resize kernel, same uint8 rounding, same
  float64 rescale then float32 normalise): max abs error 0 on every file we tried;
- it is what BLIP2 was trained with: LAVIS applies torchvision transforms to PIL images, that is
  PIL's bicubic resize;
- the torchvision backend's uint8 antialiased bicubic rounds differently, and differs by build.
Measured here (transformers 5.24, torchvision 0.29.1, CPU) on JPEG/PNG files of 640x480,
480x640, 300x300, 1000x200, 50x70, 225x223 with noise, gradient and checkerboard content and
with L, RGBA, LA, P, CMYK and I;16 inputs: fast vs slow differ by at most one uint8 level after
resizing, 0.0150 after normalisation (1 / (255 * 0.2613)), mean 5e-5; so we are within 0.0151
of the fast processor too. (A gap of ~0.15 was reported to us; we could not reproduce it.)

open_clip (`OpenClipPreprocessor`): `open_clip.image_transform(image_size, is_train=False,
mean, std, resize_mode, interpolation)`, the eval transform `create_model_and_transforms`
returns: 'shortest' = PIL resize of the shorter side to the target (torchvision `Resize(int)`
size rule), centre crop with torchvision's rounding; 'squash' = resize to the target ignoring
aspect; 'longest' = resize the longer side, pad with `fill_color`, centre crop; then `x/255`
in float32 and `(x - mean) / std`. Max abs error vs open_clip's own transform: 0 in the tests
(tolerance 1e-6 for float32 rounding). One deliberate difference: open_clip converts to RGB
after resizing and drops alpha without compositing; we convert at decode time (see decode.py),
so RGBA / palette files differ from what open_clip does with the raw PIL image.

The paper centre-crops images for captioning as well when it computes CLIP Recall;
`Blip2Preprocessor(center_crop=True)` does that (open_clip's 'shortest' geometry, BLIP2's
arithmetic). Off by default here, which equals transformers; the caption and evaluate commands
turn it on (`image_files.CENTER_CROP`, where the reason is given).

Per-channel arithmetic is a 256-entry lookup table per channel, built with exactly the
reference's float operations, so it is exact and cheap.
"""
from __future__ import annotations

from typing import Sequence, Union

import numpy as np
from PIL import Image

from vlrm_jax.data.decode import to_rgb

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

ImageLike = Union[np.ndarray, Image.Image]

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def _as_pil(image: ImageLike) -> Image.Image:
    if isinstance(image, Image.Image):
        return to_rgb(image)
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[-1] != 3 or a.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 array (H, W, 3), got {a.dtype} {a.shape}")
    return Image.fromarray(a, mode="RGB")


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def _torch_round(x: float) -> int:
    # torchvision uses Python's round(): halves go to the even neighbour.
    return int(round(x))


def _center_crop_or_pad(im: Image.Image, size: tuple[int, int], fill: int = 0) -> Image.Image:
    """torchvision's CenterCrop / open_clip's CenterCropOrPad on a PIL image."""
    ch, cw = size
    w, h = im.size
    if cw > w or ch > h:
        left, top = max(cw - w, 0) // 2, max(ch - h, 0) // 2
        canvas = Image.new(im.mode, (max(w, cw), max(h, ch)), (fill,) * 3)
        canvas.paste(im, (left, top))
        im, (w, h) = canvas, canvas.size
        if (w, h) == (cw, ch):
            return im
    top, left = _torch_round((h - ch) / 2.0), _torch_round((w - cw) / 2.0)
    return im.crop((left, top, left + cw, top + ch))


def _shortest_side_size(w: int, h: int, target: int) -> tuple[int, int]:
    """torchvision Resize(int): shorter side -> target, longer side truncated; returns (w, h)."""
    if w <= h:
        return target, int(target * h / w)
    return int(target * w / h), target


def _keep_ratio_size(w: int, h: int, size: tuple[int, int], longest: bool) -> tuple[int, int]:
    """open_clip's ResizeKeepRatio size rule; returns (w, h)."""
    rh, rw = h / size[0], w / size[1]
    ratio = max(rh, rw) if longest else min(rh, rw)
    return round(w / ratio), round(h / ratio)


_CHANNEL_OFFSET = np.array([0, 256, 512], np.uint16)


def _flat_lut(levels: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(256, 1) rescaled levels -> flat (768,) table of (level - mean_c) / std_c in float32."""
    table = (levels - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(table.astype(np.float32).T).ravel()


class _Preprocessor:
    """Shared: a LUT for rescale + normalise, single-image `__call__`, `batch`."""

    output_shape: tuple[int, int, int]
    _lut: np.ndarray  # (3 * 256,) float32: entry c * 256 + v is channel c's value for level v

    def _geometry(self, im: Image.Image) -> Image.Image:
        raise NotImplementedError

    def __call__(self, image: ImageLike) -> np.ndarray:
        """One image -> float32 (H, W, 3)."""
        a = np.asarray(self._geometry(_as_pil(image)))
        return np.take(self._lut, a + _CHANNEL_OFFSET)

    def batch(self, images: Sequence[ImageLike]) -> np.ndarray:
        """A list of images -> float32 (B, H, W, 3)."""
        out = np.empty((len(images),) + self.output_shape, np.float32)
        for i, image in enumerate(images):
            out[i] = self(image)
        return out


class Blip2Preprocessor(_Preprocessor):
    """transformers' BlipImageProcessorPil with blip2-opt-2.7b's settings (see module docstring).

    size: output side (or (height, width)). center_crop: shortest-side resize + centre crop first,
    as the paper does for CLIP Recall; False equals transformers.
    """

    def __init__(self, size: int | Sequence[int] = 224, mean: Sequence[float] = OPENAI_CLIP_MEAN,
                 std: Sequence[float] = OPENAI_CLIP_STD, center_crop: bool = False):
        self.size = _pair(size)
        self.center_crop = center_crop
        self.output_shape = self.size + (3,)
        # transformers: uint8 -> float64 * (1/255) -> float32, then (x - mean) / std in float32.
        v = (np.arange(256, dtype=np.float64) * (1 / 255)).astype(np.float32)[:, None]
        self._lut = _flat_lut(v, mean, std)

    def _geometry(self, im: Image.Image) -> Image.Image:
        h, w = self.size
        if self.center_crop:
            if h == w:
                im = im.resize(_shortest_side_size(*im.size, h), Image.Resampling.BICUBIC)
            else:
                im = im.resize(_keep_ratio_size(*im.size, self.size, False), Image.Resampling.BICUBIC)
            return _center_crop_or_pad(im, self.size)
        return im.resize((w, h), Image.Resampling.BICUBIC)


class OpenClipPreprocessor(_Preprocessor):
    """open_clip.image_transform(image_size, is_train=False, mean, std, resize_mode, interpolation).

    Defaults are those of the OpenCLIP ViT-g-14 / ViT-bigG-14 eval transform.
    """

    def __init__(self, image_size: int | Sequence[int] = 224, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, resize_mode: str = "shortest",
                 interpolation: str = "bicubic", fill_color: int = 0):
        if resize_mode not in ("shortest", "longest", "squash"):
            raise ValueError(f"resize_mode must be shortest, longest or squash, got {resize_mode!r}")
        if interpolation not in _RESAMPLE:
            raise ValueError(f"interpolation must be bicubic or bilinear, got {interpolation!r}")
        self.size = _pair(image_size)
        self.resize_mode = resize_mode
        self.resample = _RESAMPLE[interpolation]
        self.fill_color = fill_color
        self.output_shape = self.size + (3,)
        mean = OPENAI_CLIP_MEAN if mean is None else tuple(mean)
        std = OPENAI_CLIP_STD if std is None else tuple(std)
        # torchvision: to_tensor = float32(x) / 255; Normalize = (x - mean) / std, all float32.
        v = (np.arange(256, dtype=np.float32) / np.float32(255))[:, None]
        self._lut = _flat_lut(v, mean, std)

    def _geometry(self, im: Image.Image) -> Image.Image:
        h, w = self.size
        if self.resize_mode == "squash":
            return im.resize((w, h), self.resample)
        if self.resize_mode == "longest":
            im = im.resize(_keep_ratio_size(*im.size, self.size, True), self.resample)
            return _center_crop_or_pad(im, self.size, self.fill_color)
        if h == w:
            im = im.resize(_shortest_side_size(*im.size, h), self.resample)
        else:  # open_clip uses ResizeKeepRatio here, whose interpolation is always bicubic
            im = im.resize(_keep_ratio_size(*im.size, self.size, False), Image.Resampling.BICUBIC)
        return _center_crop_or_pad(im, self.size)


def blip2_pixel_values(images: Sequence[ImageLike], size: int = 224) -> np.ndarray:
    """BLIP2 pixel_values for a list of images: float32 (B, size, size, 3)."""
    return Blip2Preprocessor(size).batch(images)


def open_clip_pixel_values(images: Sequence[ImageLike], image_size: int = 224,
                           **kwargs) -> np.ndarray:
    """open_clip pixel_values for a list of images: float32 (B, H, W, 3)."""
    return OpenClipPreprocessor(image_size, **kwargs).batch(images)
