"""A tiny random open_clip CLIP for parity tests, registered with open_clip under its own name.

Odd sizes on purpose (3 vision heads of width 10, 5 text heads of width 4, patch 7, MLP widths 39
and 37, embed_dim 12) and every parameter randomised, LayerNorm weights and biases, attention
biases, class token and logit_scale included: open_clip initialises those to constants, which
would hide a dropped bias or a swapped norm. The vocabulary is open_clip's own, so real tokenizer
ids work end to end.
"""
from __future__ import annotations

import json
import os

import numpy as np

from tests import factories

NAME = "vlrm-tiny-clip"
CONFIG = {
    "embed_dim": 12,
    "vision_cfg": {"image_size": 28, "layers": 3, "width": 30, "head_width": 10, "mlp_ratio": 1.3, "patch_size": 7},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 20, "heads": 5, "layers": 3, "mlp_ratio": 1.85},
}
# Captions whose EOT lands at different positions, the last one cut at the context length.
TEXTS = ["a dog", "two red cubes on a green floor", "", "a photo of a cat sitting next to a very small blue ball "
         "on a table in the kitchen at night"]


def write_config(folder: str, config: dict = CONFIG, name: str = NAME) -> str:
    path = os.path.join(folder, f"{name}.json")
    with open(path, "w") as f:
        json.dump(config, f)
    return path


def register(folder: str) -> str:
    """Write the config and register it with open_clip in this process; returns the JSON path."""
    import open_clip

    path = write_config(folder)
    open_clip.add_model_config(path)
    return path


def randomise(model, seed: int = 0, std: float = 0.2):
    """open_clip's LayerNorms are named ln_*."""
    return factories.randomise(model, seed, std, is_norm_scale=lambda name: ".ln_" in f".{name}" and name.endswith("weight"))


def create(seed: int = 0):
    """open_clip's own CLIP for the registered tiny config, every parameter random."""
    import open_clip

    return randomise(open_clip.create_model(NAME), seed)


def random_pixels(batch: int, size: int = 28, seed: int = 0) -> np.ndarray:
    """Channels-last float32 (B, H, W, 3), already 'normalised'."""
    return np.random.default_rng(seed).normal(size=(batch, size, size, 3)).astype(np.float32)
