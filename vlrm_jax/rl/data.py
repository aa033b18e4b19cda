"""Training batches for the loop: an endless, resumable stream of preprocessed images.

A stream yields `(batch, state)`: `batch` a dict of arrays with a leading batch axis (`pixels`
for the captioner and, for VLRM-RS, `clip_pixels`), `state` a small JSON dict; passing a state
back resumes right after the batch that carried it, so the data position is part of a checkpoint.

- `ImageStream`: a `vlrm_jax.data` source (folder, tar shards or `tfds:NAME/SPLIT`), split per
  host, shuffled per epoch from the seed, decoded in the source's thread pool, bad files skipped
  and counted; one preprocessing per model that reads the pixels (BLIP2's processor, OpenCLIP's).
- `RandomStream`: normal noise as a pure function of (seed, position), for tiny runs and tests;
  each process takes its rows of the same global batch, so any process layout sees the same data.

With several processes each stream yields only this process's rows (`A2CStep.process_rows`):
`ImageStream` through a source split per host, `RandomStream` by slicing the global batch.
"""
from __future__ import annotations

import os

import numpy as np

from vlrm_jax.data.decode import DecodeOptions
from vlrm_jax.data.preprocess import Blip2Preprocessor, OpenClipPreprocessor


class RandomStream:
    def __init__(self, seed: int, batch_size: int, image_size: int, rows: slice | None = None):
        self.seed, self.batch_size, self.image_size = seed, batch_size, image_size
        self.rows = rows or slice(0, batch_size)

    def batches(self, state: dict | None):
        position = (state or {}).get("position", 0)
        while True:
            rng = np.random.default_rng([self.seed, position])
            position += 1
            size = self.image_size
            pixels = rng.normal(size=(self.batch_size, size, size, 3)).astype(np.float32)[self.rows]
            yield {"pixels": pixels}, {"position": position}

    def skip_counts(self) -> dict[str, int]:
        return {}


class _Preprocessors:
    """Every model's preprocessing of one image, flattened into one vector: a source batches one
    array per image; `split` gives each model its own (B, H, W, 3) pixels back."""

    def __init__(self, parts: dict):
        self.parts = parts
        self.shapes = {name: tuple(p.output_shape) for name, p in parts.items()}
        self.output_shape = (sum(int(np.prod(s)) for s in self.shapes.values()),)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return np.concatenate([p(image).ravel() for p in self.parts.values()])

    def split(self, flat: np.ndarray) -> dict:
        out, start = {}, 0
        for name, shape in self.shapes.items():
            size = int(np.prod(shape))
            out[name] = flat[:, start:start + size].reshape(len(flat), *shape)
            start += size
        return out


def open_training_source(spec: str, seed: int, workers: int = 8, min_side: int = 32):
    """A training source: an image folder, tar shards (a glob, a .tar path, or a folder of .tar
    files as `python -m vlrm_jax.data.shards` writes) or `tfds:NAME/SPLIT`, split over this
    process's host (jax.process_index / process_count), shuffled per epoch."""
    from vlrm_jax.data.sources import FolderSource, TarSource

    common = dict(seed=seed, shuffle=True, decode=DecodeOptions(min_side=min_side), workers=workers)
    if spec.startswith("tfds:"):
        from vlrm_jax.data.tfds_source import TfdsSource  # tensorflow only when asked for

        name, _, split = spec[len("tfds:"):].partition("/")
        return TfdsSource(name, split or "train", **common)
    if spec.endswith(".tar") or "*" in spec or _holds_shards_only(spec):
        return TarSource(spec, **common)
    return FolderSource(spec, **common)


def _holds_shards_only(folder: str) -> bool:
    """A folder with .tar files and no images: shards (a folder with both is read as images,
    the tars ignored, as before)."""
    from vlrm_jax.data.image_files import list_folder

    if not os.path.isdir(folder) or not any(f.endswith(".tar") for _, _, files in os.walk(folder) for f in files):
        return False
    return not list_folder(folder)


class ImageStream:
    def __init__(self, source, batch_size: int, blip2_size: int, clip_preprocess: dict | None = None):
        parts = {"pixels": Blip2Preprocessor(blip2_size)}
        if clip_preprocess is not None:
            parts["clip_pixels"] = OpenClipPreprocessor(**clip_preprocess)
        self.source, self.batch_size = source, batch_size
        self.transform = _Preprocessors(parts)

    def batches(self, state: dict | None):
        for batch in self.source.batches(self.batch_size, transform=self.transform, drop_remainder=True,
                                         num_epochs=None, state=state):
            yield self.transform.split(batch.images), dict(batch.state)

    def skip_counts(self) -> dict[str, int]:
        return self.source.skips.counts
