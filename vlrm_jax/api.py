"""The public Python API: load a converted (or shapes-world) folder and run it.

Inputs are numpy or jax arrays; pixel_values are float32 (B, H, W, 3), normalised exactly as the
transformers / open_clip processor would (channels last is the only difference). Outputs are numpy.
Each call runs one jitted function; shapes seen before do not recompile.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vlrm_jax.checkpoint import kinds
from vlrm_jax.checkpoint import model_dir as md
from vlrm_jax.loading import JittedModule, forward, ids_and_mask, load_module, override_precision
from vlrm_jax.models.blip2 import Blip2Captioner, Blip2Config
from vlrm_jax.models.opt import OPTConfig, OPTForCausalLM


class Captioner(JittedModule):
    """BLIP2 (OPT) captioner."""

    module: Blip2Captioner

    @classmethod
    def load(cls, model_dir: str, dtype: str | None = None, param_dtype: str | None = None) -> "Captioner":
        """`dtype` / `param_dtype` override the ViT and OPT precision (e.g. "bfloat16");
        the Q-Former stays fp32 as in transformers."""
        meta = md.check_kind(model_dir, kinds.BLIP2_OPT)
        cfg = override_precision(Blip2Config.from_dict(meta["model"]), dtype, param_dtype, ("vision", "text"))
        module = load_module(model_dir, lambda c: Blip2Captioner(c, rngs=nnx.Rngs(0)), cfg)
        return cls(module, model_dir)

    @property
    def config(self) -> Blip2Config:
        return self.module.cfg

    def logits(self, pixel_values, input_ids, attention_mask=None) -> np.ndarray:
        """Logits (B, T, V) of the text positions, the image soft prompt placed before them."""
        pixels = jnp.asarray(pixel_values, jnp.float32)
        return np.asarray(self._run(forward, pixels, *ids_and_mask(input_ids, attention_mask)))

    def rollout(self, pixel_values, seed: int = 0, **generation_kwargs):
        """Decode with transformers' generation arguments; returns the whole `Rollout` (tokens,
        mask, per-token log-probs, finished flags, beam scores) as numpy arrays."""
        from vlrm_jax.generate import GenerationConfig

        return self._rollout(pixel_values, seed, GenerationConfig(**generation_kwargs))

    def _rollout(self, pixel_values, seed: int, cfg):
        from vlrm_jax.generate.search import generate_jit

        out = generate_jit(self._graphdef, cfg, self._state, jnp.asarray(pixel_values, jnp.float32),
                           jax.random.key(seed))
        return jax.tree.map(lambda x: None if x is None else np.asarray(x), out)

    def generate(self, pixel_values, seed: int = 0, **generation_kwargs) -> np.ndarray:
        """Token ids (B * num_return_sequences, max_new_tokens) of the new tokens, pad id after
        EOS. Arguments as transformers names them: max_new_tokens, min_new_tokens, do_sample,
        temperature, top_k, top_p, num_beams, length_penalty, early_stopping,
        no_repeat_ngram_size, num_return_sequences; `seed` fixes sampling."""
        return self.rollout(pixel_values, seed, **generation_kwargs).tokens

    def decode(self, token_ids) -> list[str]:
        return [t.strip() for t in self.tokenizer.batch_decode(np.asarray(token_ids), skip_special_tokens=True)]

    def caption(self, images, seed: int = 0, **generation_kwargs) -> list[str]:
        """Captions for PIL images, preprocessed as transformers' BLIP2 processor does; the
        paper's inference settings unless overridden."""
        from vlrm_jax.data.preprocess import blip2_pixel_values
        from vlrm_jax.generate import GenerationConfig

        cfg = dataclasses.replace(GenerationConfig.paper_inference(), **generation_kwargs)
        pixels = blip2_pixel_values(images, size=self.config.vision.image_size)
        return self.decode(self._rollout(pixels, seed, cfg).tokens)


class ReferenceLM(JittedModule):
    """OPT language model that scores caption text (the reward's `ref` term)."""

    module: OPTForCausalLM

    @classmethod
    def load(cls, model_dir: str, dtype: str | None = None, param_dtype: str | None = None) -> "ReferenceLM":
        """Accepts an `opt` folder, or a `blip2_opt` captioner folder whose language model is used."""
        meta = md.check_kind(model_dir, kinds.OPT, kinds.BLIP2_OPT)
        if meta["kind"] == kinds.BLIP2_OPT:
            captioner = Captioner.load(model_dir, dtype, param_dtype)
            return cls(captioner.module.language_model, model_dir)
        cfg = override_precision(OPTConfig(**meta["model"]), dtype, param_dtype, ("",))
        module = load_module(model_dir, lambda c: OPTForCausalLM(c, rngs=nnx.Rngs(0)), cfg)
        return cls(module, model_dir)

    def logits(self, input_ids, attention_mask=None) -> np.ndarray:
        return np.asarray(self._run(forward, *ids_and_mask(input_ids, attention_mask)))


def _itc_similarity(model, pixel_values, input_ids, attention_mask):
    return model.itc_similarity(model.vision_model(pixel_values), input_ids, attention_mask)


def _itc_image_features(model, pixel_values):
    return model.image_features(model.vision_model(pixel_values)).astype(jnp.float32)


def _itc_text_features(model, input_ids, attention_mask):
    return model.text_features(input_ids, attention_mask).astype(jnp.float32)


class ItmScorer(JittedModule):
    """BLIP2-ITM: the reward's `sim` term is `logits(...)[:, 1]`, the match logit before softmax.

    input_ids are the BERT tokenizer's ids ([CLS] text [SEP], right padding) without the image
    placeholder tokens that transformers' processor prepends when the config has an image_token_index.
    """

    module: "Blip2Itm"  # noqa: F821

    @classmethod
    def load(cls, model_dir: str, dtype: str | None = None, param_dtype: str | None = None) -> "ItmScorer":
        from vlrm_jax.models.itm import Blip2Itm, ItmConfig

        meta = md.check_kind(model_dir, kinds.BLIP2_ITM)
        cfg = override_precision(ItmConfig.from_dict(meta["model"]), dtype, param_dtype, ("vision",))
        return cls(load_module(model_dir, lambda c: Blip2Itm(c, rngs=nnx.Rngs(0)), cfg), model_dir)

    @property
    def config(self) -> "ItmConfig":  # noqa: F821
        return self.module.cfg

    def _inputs(self, pixel_values, input_ids, attention_mask):
        return (jnp.asarray(pixel_values, jnp.float32), *ids_and_mask(input_ids, attention_mask))

    def logits(self, pixel_values, input_ids, attention_mask=None) -> np.ndarray:
        """(B, 2) image-text matching logits for image i with text i; index 1 is "match"."""
        return np.asarray(self._run(forward, *self._inputs(pixel_values, input_ids, attention_mask)))

    def itc_similarity(self, pixel_values, input_ids, attention_mask=None) -> np.ndarray:
        """(B_images, B_texts) contrastive cosine similarities (max over query outputs)."""
        return np.asarray(self._run(_itc_similarity, *self._inputs(pixel_values, input_ids, attention_mask)))

    # The two sides of itc_similarity apart, so N images and T texts cost N + T passes, not N x T
    # (retrieval: vlrm_jax.eval.retrievers).
    def itc_image_features(self, pixel_values) -> np.ndarray:
        """(B, Q, D) normalised projected query outputs: an image's Q contrastive embeddings."""
        return np.asarray(self._run(_itc_image_features, jnp.asarray(pixel_values, jnp.float32)))

    def itc_text_features(self, input_ids, attention_mask=None) -> np.ndarray:
        """(B, D) normalised projected [CLS] outputs of the text-only Q-Former."""
        return np.asarray(self._run(_itc_text_features, *ids_and_mask(input_ids, attention_mask)))
