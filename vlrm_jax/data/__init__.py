"""Image input: robust decoding, sources (folder, webdataset tar, TFDS), preprocessing.

Importing this package never loads tensorflow: `TfdsSource` imports it when one is built.
"""
from vlrm_jax.data.decode import REASONS, Decoded, DecodeOptions, SkipCounter, decode_image, to_rgb
from vlrm_jax.data.preprocess import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    Blip2Preprocessor,
    OpenClipPreprocessor,
    blip2_pixel_values,
    open_clip_pixel_values,
)
from vlrm_jax.data.sources import Batch, FolderSource, ImageSource, Record, TarSource
from vlrm_jax.data.tfds_source import TfdsSource

__all__ = [
    "REASONS", "Decoded", "DecodeOptions", "SkipCounter", "decode_image", "to_rgb",
    "OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD", "Blip2Preprocessor", "OpenClipPreprocessor",
    "blip2_pixel_values", "open_clip_pixel_values",
    "Batch", "FolderSource", "ImageSource", "Record", "TarSource", "TfdsSource",
]
