"""Image files for the data tests: real encodings written with PIL, good and bad."""
from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

# Sizes and aspect ratios the preprocessing must handle (width, height).
SIZES = [(640, 480), (480, 640), (300, 300), (1000, 200), (50, 70)]


def pattern(width: int, height: int, seed: int = 0, noise: float = 25.0) -> np.ndarray:
    """Gradients plus noise: smooth regions and edges, so resampling differences show."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    base = np.stack([x * 255 / max(width - 1, 1), y * 255 / max(height - 1, 1),
                     127 + 100 * np.sin((x + 2 * y) / 7.0)], -1)
    return np.clip(base + rng.normal(0, noise, base.shape), 0, 255).astype(np.uint8)


def encode(image: Image.Image | np.ndarray, fmt: str = "JPEG", **kwargs) -> bytes:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def bad_and_odd_files() -> dict[str, bytes]:
    """name -> bytes: files that must be rejected, and odd modes that must be converted."""
    rgb = pattern(64, 48, seed=1)
    jpeg = encode(rgb, quality=90)
    png = encode(rgb, "PNG")
    rgba = np.dstack([rgb, np.tile(np.array([0, 255], np.uint8), 32)[None, :].repeat(48, 0)])
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0  # palette entry 0 is transparent
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    return {
        "empty.jpg": b"",
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "truncated.png": png[: len(png) // 2],
        "text.jpg": b"this is a text file, not a JPEG\n" * 4,
        "tiny_1x1.png": encode(np.zeros((1, 1, 3), np.uint8), "PNG"),
        "thin_400x8.png": encode(np.zeros((8, 400, 3), np.uint8), "PNG"),
        "large_300x300.png": encode(np.zeros((300, 300, 3), np.uint8), "PNG"),
        "cmyk.jpg": encode(Image.fromarray(rgb).convert("CMYK"), quality=95),
        "gray16.png": encode(Image.fromarray(np.linspace(0, 65535, 64 * 48).reshape(48, 64)
                                             .astype(np.uint16)), "PNG"),
        "gray.png": encode(Image.fromarray(rgb[..., 0]), "PNG"),
        "bilevel.png": encode(Image.fromarray(rgb[..., 0] > 128), "PNG"),
        "rgba.png": encode(Image.fromarray(rgba, "RGBA"), "PNG"),
        "la.png": encode(Image.fromarray(rgba, "RGBA").convert("LA"), "PNG"),
        "palette_transparent.png": encode(pal, "PNG", transparency=0),
        "exif_rotated.jpg": encode(rgb, quality=90, exif=exif.tobytes()),
        "good.webp": encode(rgb, "WEBP", quality=90),
    }


def write_files(root: str, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
