"""The public OpenCLIP model: load a `convert.open_clip` folder and embed images and texts.

    clip = ClipModel.load("checkpoints/clip-bigG")
    image_emb = clip.encode_image(clip.pixel_values(pil_images))   # (B, embed_dim) float32
    text_emb = clip.encode_text(clip.tokenize(["a cat", "a dog"]))   # (B, embed_dim) float32

Embeddings are not L2-normalised, as open_clip's encode_image / encode_text(normalize=False).
pixel_values are float32 (B, H, W, 3) normalised as open_clip's eval transform does (the folder's
`preprocess.json`); input_ids are open_clip tokenizer ids, (B, L) with L <= context_length.
"""
from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
from flax import nnx

from vlrm_jax.checkpoint import model_dir as md
from vlrm_jax.checkpoint.kinds import OPEN_CLIP as KIND
from vlrm_jax.checkpoint.open_clip_files import PREPROCESS_FILE
from vlrm_jax.loading import JittedModule, load_module, override_precision
from vlrm_jax.models import clip


def _encode_image(model, pixel_values):
    return model.encode_image(pixel_values).astype(jnp.float32)


def _encode_text(model, input_ids):
    return model.encode_text(input_ids).astype(jnp.float32)


class ClipModel(JittedModule):
    """OpenCLIP (ViT-g-14, ViT-bigG-14, ...): the RS reward's similarity and the CLIP Recall metric."""

    module: clip.ClipModel

    @classmethod
    def load(cls, model_dir: str, dtype: str | None = None, param_dtype: str | None = None) -> "ClipModel":
        """`dtype` / `param_dtype` override both towers' precision (e.g. "bfloat16")."""
        meta = md.check_kind(model_dir, KIND)
        cfg = override_precision(clip.ClipConfig.from_dict(meta["model"]), dtype, param_dtype, ("vision", "text"))
        return cls(load_module(model_dir, lambda c: clip.ClipModel(c, rngs=nnx.Rngs(0)), cfg), model_dir)

    @property
    def config(self) -> clip.ClipConfig:
        return self.module.cfg

    @property
    def context_length(self) -> int:
        return self.config.text.context_length

    @property
    def logit_scale(self) -> float:
        return float(self.module.logit_scale[...])

    def encode_image(self, pixel_values) -> np.ndarray:
        """(B, H, W, 3) float32 pixels -> (B, embed_dim) float32."""
        return np.asarray(self._run(_encode_image, jnp.asarray(pixel_values, jnp.float32)))

    def encode_text(self, input_ids) -> np.ndarray:
        """(B, L) token ids -> (B, embed_dim) float32."""
        return np.asarray(self._run(_encode_text, jnp.asarray(input_ids, jnp.int32)))

    @property
    def tokenizer(self):
        """open_clip's tokenizer for this model, rebuilt from the folder without any download."""
        if self._tokenizer is None:
            import open_clip  # lazy: pulls in torch

            self._tokenizer = open_clip.get_tokenizer(f"local-dir:{self._folder('tokenizer')}")
        return self._tokenizer

    def tokenize(self, texts: list[str]) -> np.ndarray:
        """int32 (B, context_length): SOT, text, EOT, zero padding (EOT kept when truncated)."""
        return np.asarray(self.tokenizer(list(texts)), dtype=np.int32)

    @property
    def preprocess_config(self) -> dict:
        """Arguments of `vlrm_jax.data.OpenClipPreprocessor`: image_size, mean, std, resize_mode,
        interpolation, fill_color."""
        with open(os.path.join(self._folder("preprocess config"), PREPROCESS_FILE)) as f:
            return json.load(f)

    def pixel_values(self, images) -> np.ndarray:
        """open_clip's eval transform of PIL images / RGB uint8 arrays: float32 (B, H, W, 3)."""
        from vlrm_jax.data.preprocess import OpenClipPreprocessor

        return OpenClipPreprocessor(**self.preprocess_config).batch(images)
