"""Robust image decoding: bytes or a path in, an RGB uint8 array (H, W, 3) or a reason out.

A crawl of millions of images always holds some broken files; one of them must never stop a
training run. `decode_image` therefore never raises on bad data: it returns a `Decoded` whose
`reason` names why the image was rejected (one of `REASONS`), and a `SkipCounter` tallies those
reasons so that a run can report what it dropped.

Conversions to RGB (all deliberate, all documented here):
- EXIF orientation is applied (`ImageOps.exif_transpose`), so a phone photo is seen upright.
  Neither the transformers nor the open_clip processor does this; it changes only images that
  carry an orientation tag, and for those upright is what a caption should describe.
- Transparency (RGBA, LA, PA, premultiplied modes, or a palette / grey image with a `transparency`
  entry) is composited onto a white background, the same rule and the same PIL calls as
  transformers' `convert_to_rgb`, so our RGB equals the processor's for such files.
- 16-bit grey (I;16*) and 32-bit integer grey (I) are scaled from 0..65535 to 0..255; PIL's own
  `convert("RGB")` would clip every value above 255 to white. Float grey (F) is clipped to 0..255.
- CMYK, YCbCr, grey (L), bilevel (1) and palettes without transparency use PIL's `convert("RGB")`
  (no ICC colour management).

Rejections (`Decoded.reason`): `empty` (zero bytes), `unreadable` (the file could not be read),
`not_image` (PIL does not recognise the format), `too_large` (more than `max_pixels`, checked from
the header before any pixel is decoded: a decompression-bomb guard), `too_small` (shorter side
below `min_side`, e.g. 1x1 tracking pixels), `truncated` (the data ends early), `corrupt` (any
other decoder failure) and `unsupported_mode` (a pixel mode PIL cannot turn into RGB).
"""
from __future__ import annotations

import dataclasses
import io
import logging
import os
import threading
from collections import Counter
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

REASONS = (
    "empty", "unreadable", "not_image", "too_large", "too_small", "truncated", "corrupt",
    "unsupported_mode",
)

ImageInput = Union[bytes, bytearray, memoryview, str, os.PathLike]


@dataclasses.dataclass(frozen=True)
class DecodeOptions:
    """Limits and switches for `decode_image`.

    min_side: images whose shorter side is below this are rejected (`too_small`). 32 keeps every
      real photo (the tests use 50x70) and drops icons and 1x1 pixels that carry no content.
    max_pixels: width*height above this is rejected (`too_large`) before decoding. 2**26 (e.g.
      8192x8192) is below PIL's own decompression-bomb warning (about 89.5 M pixels), so PIL
      never warns first.
    exif_transpose: rotate / flip by the EXIF orientation tag.
    background: the RGB colour transparent pixels are composited onto.
    draft: when set, JPEGs are decoded at a reduced scale (DCT scaling) whose sides stay at least
      this large: several times faster on big photos, but the pixels then differ from a
      full-size decode, so leave it None wherever parity with a processor matters.
    """

    min_side: int = 32
    max_pixels: int = 2**26
    exif_transpose: bool = True
    background: tuple[int, int, int] = (255, 255, 255)
    draft: int | None = None


@dataclasses.dataclass(frozen=True)
class Decoded:
    """The outcome of `decode_image`: `image` (H, W, 3) uint8 when `ok`, else `reason` + `detail`."""

    image: np.ndarray | None
    reason: str | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.reason is None


def _reject(reason: str, detail: str) -> Decoded:
    return Decoded(image=None, reason=reason, detail=detail)


def _grey_to_8bit(im: Image.Image) -> Image.Image:
    """I;16* / I / F grey -> L without the clipping PIL's convert would do."""
    a = np.asarray(im)
    if im.mode == "F":
        a8 = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    else:  # 16-bit range: 65535 -> 255, rounded
        a32 = np.clip(a.astype(np.int64), 0, 65535)
        a8 = ((a32 * 255 + 32767) // 65535).astype(np.uint8)
    return Image.fromarray(a8, mode="L")


def to_rgb(im: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Converts a loaded PIL image of any mode to RGB by the rules in the module docstring.

    Raises ValueError when PIL has no conversion for the mode.
    """
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        im = _grey_to_8bit(im)
    bands = im.getbands()
    if "A" in bands or "a" in bands or im.info.get("transparency") is not None:
        rgba = im.convert("RGBA")
        base = Image.new("RGBA", rgba.size, tuple(background) + (255,))
        return Image.alpha_composite(base, rgba).convert("RGB")
    if im.mode == "RGB":
        return im
    return im.convert("RGB")


def _read_bytes(source: ImageInput) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    with open(source, "rb") as f:
        return f.read()


def decode_image(source: ImageInput, options: DecodeOptions = DecodeOptions()) -> Decoded:
    """Decodes image bytes, or the file at a path, into RGB uint8 (H, W, 3). Never raises on bad data.

    Returns a `Decoded`; check `.ok`, and on failure `.reason` (one of `REASONS`) and `.detail`.
    """
    try:
        data = _read_bytes(source)
    except OSError as e:
        return _reject("unreadable", f"{type(e).__name__}: {e}")
    if not data:
        return _reject("empty", "0 bytes")
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        return _reject("not_image", f"{len(data)} bytes in no format PIL knows")
    except Image.DecompressionBombError as e:
        return _reject("too_large", str(e))
    except Exception as e:  # noqa: BLE001 - any header parser failure is bad data, not a bug here
        return _reject("corrupt", f"{type(e).__name__}: {e}")

    w, h = im.size
    if w * h > options.max_pixels:
        return _reject("too_large", f"{w}x{h} = {w * h} pixels > max_pixels={options.max_pixels}")
    if min(w, h) < options.min_side:
        return _reject("too_small", f"{w}x{h}, shorter side < min_side={options.min_side}")

    try:
        if options.draft is not None and im.format == "JPEG":
            im.draft("RGB", (options.draft, options.draft))
        im.load()
    except (EOFError, OSError) as e:
        # PIL reports data that ends early as OSError("image file is truncated ...") or EOFError.
        msg = f"{type(e).__name__}: {e}"
        return _reject("truncated" if "truncat" in msg or isinstance(e, EOFError) else "corrupt", msg)
    except Exception as e:  # noqa: BLE001 - e.g. SyntaxError from a broken PNG chunk
        return _reject("corrupt", f"{type(e).__name__}: {e}")

    if options.exif_transpose:
        try:
            im = ImageOps.exif_transpose(im)
        except Exception as e:  # noqa: BLE001 - a broken EXIF block leaves the pixels usable
            logger.debug("ignoring unusable EXIF orientation: %s", e)

    try:
        rgb = to_rgb(im, options.background)
    except ValueError as e:
        return _reject("unsupported_mode", f"mode {im.mode}: {e}")
    return Decoded(image=np.asarray(rgb, dtype=np.uint8))


class SkipCounter:
    """Thread-safe tally of skipped items by reason, with a logged summary.

    Each skip names its item: the first `examples_per_reason` of each reason are logged at WARNING
    (key, reason, detail), the rest at DEBUG so a bad crawl cannot flood the log.
    """

    def __init__(self, name: str = "images", examples_per_reason: int = 3,
                 log: logging.Logger | None = None):
        self.name = name
        self.examples_per_reason = examples_per_reason
        self._log = log or logger
        self._lock = threading.Lock()
        self._skipped: Counter[str] = Counter()
        self._seen = 0

    def ok(self, n: int = 1) -> None:
        with self._lock:
            self._seen += n

    def skip(self, reason: str, key: str, detail: str = "") -> None:
        with self._lock:
            self._seen += 1
            self._skipped[reason] += 1
            loud = self._skipped[reason] <= self.examples_per_reason
        self._log.log(logging.WARNING if loud else logging.DEBUG,
                      "%s: skipped %r: %s (%s)", self.name, key, reason, detail)

    @property
    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(sorted(self._skipped.items()))

    @property
    def seen(self) -> int:
        with self._lock:
            return self._seen

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self._skipped.values())

    def summary(self) -> str:
        counts, seen = self.counts, self.seen
        total = sum(counts.values())
        detail = ", ".join(f"{r}={n}" for r, n in counts.items()) or "none"
        return f"{self.name}: skipped {total} of {seen} ({detail})"

    def log_summary(self, level: int = logging.INFO) -> str:
        text = self.summary()
        self._log.log(level, "%s", text)
        return text

    def reset(self) -> None:
        with self._lock:
            self._skipped.clear()
            self._seen = 0
